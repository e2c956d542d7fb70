"""DICOM in and out: CT and PET series, RTSTRUCT (read and write), RTDOSE (write and read).

One reader and one writer for the whole project. Everything that touches DICOM files goes
through this module, so the conventions are fixed here:

* Arrays come out ``[slice, row, col]`` on an :class:`~rtplan.grid.ImageGrid` with the
  **identity direction**: a series stored with flipped axial axes (feet-first or prone
  orientations, ``ImageOrientationPatient`` with a ``-1``) is flipped at this boundary, and
  the per-slice lists (``sop_instance_uids``, ``files``) follow the flipped slice order.
  Oblique, rotated or gantry-tilted series are refused (resample them to an axial grid
  first).
* Slices are sorted by their position along the slice normal (``ImagePositionPatient``
  projected on ``row x column``), never by file name or ``InstanceNumber``.
* Writers never overwrite an input, write to a temporary file in the destination folder and
  rename it into place (a failure leaves nothing half-written), refuse to write into the
  input CT folder unless asked, and take new UIDs from :func:`pydicom.uid.generate_uid`
  (deterministic when a ``uid_seed`` is given, for reproducible tests).
* Patient identifiers (name, ID, birth date) never appear in log messages or error
  messages; errors name the file and the DICOM keyword/tag instead.

RTSTRUCT files are written with rt-utils (:class:`rt_utils.RTStructBuilder`) for the dataset
skeleton and ROI bookkeeping, then corrected here, because rt-utils 1.2.7 (the newest
release) leaves the top-level FrameOfReferenceUID and several Type 2 attributes out, writes
ContourData values longer than the 16 characters a DS allows, swaps row and column pixel
spacing, places contours with an average slice gap, leaves RT ROI Interpreted Type empty,
accepts duplicate ROI names, and traces contours through voxel centres (a disk of radius 3
voxels keeps about 69 % of its area). rtplan replaces every contour with its own, traced
along voxel *edges*, so reading the file back (a voxel is inside when its centre is inside
the even-odd fill of the contours of its slice) gives the source mask again exactly.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import io
import logging
import math
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.errors import InvalidDicomError
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

from rtplan._io import atomic_path
from rtplan._validation import check_choice
from rtplan.errors import (
    DicomInputError,
    GeometryError,
    GridMismatchError,
    InvalidInputError,
    OutputExistsError,
    RtplanError,
    RtplanWarning,
)
from rtplan.grid import GRID_ATOL_MM, ImageGrid, resample_to_grid
from rtplan.structures import ROLE_TO_INTERPRETED_TYPE, Structure, StructureSet, canonical_name

__all__ = [
    "CT_IMAGE_STORAGE",
    "PET_IMAGE_STORAGE",
    "RTDOSE_STORAGE",
    "RTPLAN_STORAGE",
    "RTSTRUCT_STORAGE",
    "CtSeries",
    "PatientInfo",
    "read_ct_series",
    "read_pet_suv",
    "read_rtdose",
    "read_rtstruct",
    "write_ct_series",
    "write_rtdose",
    "write_rtstruct",
]

logger = logging.getLogger(__name__)

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
#: Tolerance (mm) on the in-plane geometry shared by the slices of one series.
_PLANE_ATOL_MM = 0.01
#: A contour counts as lying on a slice when it is closer than this fraction of the gap.
_ON_SLICE_FRACTION = 0.01

OnInvalid = Literal["raise", "warn", "ignore"]

_INTERPRETED_TYPE_TO_ROLE: dict[str, str] = {v: k for k, v in ROLE_TO_INTERPRETED_TYPE.items()}
_INTERPRETED_TYPE_TO_ROLE.update({"ISOCENTER": "landmark", "REGISTRATION": "landmark"})


# ====================================================================== value objects
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


@dataclass(frozen=True, eq=False)
class CtSeries:
    """A CT series read by :func:`read_ct_series`.

    Attributes
    ----------
    hu : ndarray of float32, shape ``grid.shape``
        Hounsfield units, ``[slice, row, col]``, identity direction.
    grid : ImageGrid
        Geometry, with the series' FrameOfReferenceUID.
    series_instance_uid, study_instance_uid : str
        SeriesInstanceUID and StudyInstanceUID.
    sop_instance_uids : tuple of str
        SOPInstanceUID of every array slice ``k``.
    files : tuple of Path
        File of every array slice ``k``.
    slice_positions_mm : ndarray, shape (nz, 3)
        ImagePositionPatient of every array slice's file.
    sop_class_uid : str
        SOPClassUID of the slices (CT Image Storage).
    series_description : str
        SeriesDescription, or ``""``.
    flipped_axes : tuple of bool
        ``(k, j, i)``: which array axes were flipped to reach the identity direction.
    patient : PatientInfo
        Patient and study attributes for derived objects (hidden from ``repr``).
    """

    hu: np.ndarray = field(repr=False)
    grid: ImageGrid
    series_instance_uid: str
    study_instance_uid: str
    sop_instance_uids: tuple[str, ...] = field(repr=False)
    files: tuple[Path, ...] = field(repr=False)
    slice_positions_mm: np.ndarray = field(repr=False)
    sop_class_uid: str = CT_IMAGE_STORAGE
    series_description: str = ""
    flipped_axes: tuple[bool, bool, bool] = (False, False, False)
    patient: PatientInfo = field(default_factory=PatientInfo, repr=False)

    @property
    def folder(self) -> Path:
        """The deepest folder holding every file of the series."""
        return Path(os.path.commonpath([str(f.parent) for f in self.files]))


# ====================================================================== file discovery
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
                pydicom.uid.ImplicitVRLittleEndian
                if implicit
                else (ExplicitVRLittleEndian if little else pydicom.uid.ExplicitVRBigEndian)
            )
        return ds


def _read_header(path: Path) -> Dataset | None:
    try:
        ds = _dcmread(path, stop_before_pixels=True)
    except Exception:  # anything that does not parse as DICOM is not part of a series
        return None
    sop_class = str(ds.get("SOPClassUID", "") or ds.file_meta.get("MediaStorageSOPClassUID", ""))
    if sop_class == _DICOMDIR_STORAGE or "DirectoryRecordSequence" in ds:
        return None
    return ds


def _tag_name(keyword: str) -> str:
    tag = pydicom.datadict.tag_for_keyword(keyword)
    if tag is None:
        return keyword
    return f"{keyword} ({tag >> 16:04X},{tag & 0xFFFF:04X})"


def _require(ds: Dataset, keyword: str, path: Path | str) -> Any:
    value = ds.get(keyword, None)
    if value is None or (isinstance(value, str) and not value.strip()) or value == []:
        raise DicomInputError(f"{path}: tag {_tag_name(keyword)} is missing or empty")
    return value


def _select_series(
    found: list[tuple[Path, Dataset]],
    folder: str | os.PathLike[str],
    *,
    modality: str,
    sop_classes: tuple[str, ...],
    series_uid: str | None,
) -> list[tuple[Path, Dataset]]:
    """The files of one series of ``modality``: by UID, or the only one; else an error."""
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


def _describe_groups(groups: dict[str, list[tuple[Path, Dataset]]]) -> str:
    parts = []
    for uid, items in groups.items():
        ds = items[0][1]
        desc = str(ds.get("SeriesDescription", "") or "")
        number = ds.get("SeriesNumber", "")
        parts.append(f"{uid} (SeriesNumber {number}, {desc!r}, {len(items)} files)")
    return "; ".join(parts)


# ====================================================================== image series
@dataclass(frozen=True)
class _ImageSeries:
    """An axial image series sorted along its normal (internal)."""

    grid_file: ImageGrid  # in file orientation, slices sorted along the normal
    items: list[tuple[Path, Dataset]]  # sorted like grid_file's slices
    positions: np.ndarray  # (n, 3)


def _sorted_series(
    items: list[tuple[Path, Dataset]], folder: str | os.PathLike[str]
) -> _ImageSeries:
    """Check the shared geometry of a series' slices and sort them along the normal."""
    first_path, first = items[0]
    iop0 = np.asarray(_require(first, "ImageOrientationPatient", first_path), float)
    if iop0.shape != (6,):
        raise DicomInputError(
            f"{first_path}: tag {_tag_name('ImageOrientationPatient')} must have 6 values"
        )
    ref = {
        "Rows": int(_require(first, "Rows", first_path)),
        "Columns": int(_require(first, "Columns", first_path)),
    }
    ps0 = np.asarray(_require(first, "PixelSpacing", first_path), float)
    for0 = str(first.get("FrameOfReferenceUID", "") or "")
    positions = []
    for path, ds in items:
        if int(ds.get("NumberOfFrames", 1) or 1) > 1:
            raise DicomInputError(
                f"{path}: multi-frame image (tag {_tag_name('NumberOfFrames')} > 1); only "
                "single-frame image series are supported"
            )
        if int(ds.get("SamplesPerPixel", 1) or 1) != 1:
            raise DicomInputError(f"{path}: tag {_tag_name('SamplesPerPixel')} must be 1")
        tilt = ds.get("GantryDetectorTilt", None)
        if tilt is not None and str(tilt).strip() and abs(float(tilt)) > 1e-3:
            raise DicomInputError(
                f"{path}: gantry tilt of {float(tilt)} degrees (tag "
                f"{_tag_name('GantryDetectorTilt')}); resample the series to an axial grid first"
            )
        iop = np.asarray(_require(ds, "ImageOrientationPatient", path), float)
        if iop.shape != (6,) or not np.allclose(iop, iop0, atol=1e-4):
            raise DicomInputError(
                f"{path}: tag {_tag_name('ImageOrientationPatient')} {iop.tolist()} differs "
                f"from {iop0.tolist()} in {first_path}"
            )
        for key, value in ref.items():
            got = int(_require(ds, key, path))
            if got != value:
                raise DicomInputError(
                    f"{path}: tag {_tag_name(key)} is {got} but {value} in {first_path} "
                    "(mixed image sizes in one series)"
                )
        ps = np.asarray(_require(ds, "PixelSpacing", path), float)
        if ps.shape != (2,) or not np.allclose(ps, ps0, atol=1e-4):
            raise DicomInputError(
                f"{path}: tag {_tag_name('PixelSpacing')} {ps.tolist()} differs from "
                f"{ps0.tolist()} in {first_path}"
            )
        fo = str(ds.get("FrameOfReferenceUID", "") or "")
        if fo != for0:
            raise DicomInputError(
                f"{path}: tag {_tag_name('FrameOfReferenceUID')} differs from {first_path}'s"
            )
        positions.append(np.asarray(_require(ds, "ImagePositionPatient", path), float))
    pos = np.asarray(positions, float).reshape(-1, 3)
    normal = np.cross(iop0[:3], iop0[3:])
    along = pos @ normal
    order = np.argsort(along, kind="stable")
    along_sorted = along[order]
    dup = np.flatnonzero(np.diff(along_sorted) <= GRID_ATOL_MM)
    if dup.size:
        a, b = items[order[dup[0]]][0], items[order[dup[0] + 1]][0]
        raise DicomInputError(
            f"{a} and {b} have the same slice position (tag "
            f"{_tag_name('ImagePositionPatient')}, {along_sorted[dup[0]]:.3f} mm along the normal)"
        )
    items_sorted = [items[n] for n in order]
    pos_sorted = pos[order]
    try:
        grid = ImageGrid.from_dicom_slices(
            pos_sorted,
            orientation=iop0,
            pixel_spacing_mm=ps0,
            rows=ref["Rows"],
            columns=ref["Columns"],
            frame_of_reference_uid=for0 or None,
        )
    except GeometryError as exc:
        tag = (
            "ImageOrientationPatient"
            if "orientation" in str(exc)
            else ("PixelSpacing" if "PixelSpacing" in str(exc) else "ImagePositionPatient")
        )
        raise DicomInputError(
            f"series in {folder} (first file {first_path}), tag {_tag_name(tag)}: {exc}"
        ) from exc
    return _ImageSeries(grid_file=grid, items=items_sorted, positions=pos_sorted)


def _to_identity(
    array: np.ndarray | None, grid: ImageGrid
) -> tuple[Any, ImageGrid, tuple[bool, bool, bool]]:
    """Flip ``array`` (on ``grid``) so that its grid has the identity direction."""
    signs = grid.axis_signs
    flips = tuple(s < 0 for s in signs)
    corner = [n - 1 if f else 0 for n, f in zip(grid.shape, flips)]
    new_grid = ImageGrid(
        shape=grid.shape,
        spacing_mm=grid.spacing_mm,
        origin_mm=tuple(grid.index_to_lps(corner).tolist()),  # type: ignore[arg-type]
        frame_of_reference_uid=grid.frame_of_reference_uid,
    )
    out = array
    if array is not None:
        axes = tuple(n for n, f in enumerate(flips) if f)
        out = np.flip(array, axis=axes) if axes else array
    return out, new_grid, flips  # type: ignore[return-value]


def _pixels(path: Path, rescale: bool = True) -> np.ndarray:
    try:
        ds = _dcmread(path)
        arr = ds.pixel_array
    except Exception as exc:  # pixel decoding has many failure modes
        raise DicomInputError(
            f"{path}: cannot decode tag {_tag_name('PixelData')} ({type(exc).__name__}: {exc})"
        ) from exc
    out = np.asarray(arr, dtype=np.float64)
    if rescale:
        slope = float(ds.get("RescaleSlope", 1.0) or 1.0)
        intercept = float(ds.get("RescaleIntercept", 0.0) or 0.0)
        out = out * slope + intercept
    return out


def _patient_info(ds: Dataset) -> PatientInfo:
    def s(key: str) -> str:
        v = ds.get(key, "")
        return "" if v is None else str(v)

    return PatientInfo(
        name=s("PatientName"),
        patient_id=s("PatientID"),
        birth_date=s("PatientBirthDate"),
        sex=s("PatientSex"),
        study_date=s("StudyDate"),
        study_time=s("StudyTime"),
        study_id=s("StudyID"),
        accession_number=s("AccessionNumber"),
        referring_physician_name=s("ReferringPhysicianName"),
        study_description=s("StudyDescription"),
    )


def read_ct_series(
    folder: str | os.PathLike[str], *, series_uid: str | None = None, pixels: bool = True
) -> CtSeries:
    """Read a CT series from a folder of single-frame CT Image files.

    Parameters
    ----------
    folder : path
        Folder searched recursively; files that are not DICOM, and DICOM objects of other
        modalities (RTSTRUCT, RTDOSE, PET...), are ignored.
    series_uid : str, optional
        SeriesInstanceUID of the series to read when the folder holds more than one CT
        series.
    pixels : bool
        When False, only the geometry and identifiers are read and ``hu`` is an empty
        array (used by the writers, which need the series' geometry but not its pixels).

    Returns
    -------
    CtSeries
        ``hu`` in Hounsfield units (``pixel * RescaleSlope + RescaleIntercept`` per slice),
        float32, ``[slice, row, col]`` with the identity direction (a flipped axial series
        is flipped here; see the module docstring), and its :class:`ImageGrid` carrying the
        FrameOfReferenceUID.

    Raises
    ------
    DicomInputError
        No CT series, several CT series and no ``series_uid``, a missing tag, gantry tilt
        (GantryDetectorTilt), oblique orientation (ImageOrientationPatient), missing,
        duplicate or unevenly spaced slices (ImagePositionPatient), or mixed Rows, Columns,
        PixelSpacing or FrameOfReferenceUID; the message names the file and the tag.
    """
    found = _find_dicom_files(folder)
    items = _select_series(
        found, folder, modality="CT", sop_classes=(CT_IMAGE_STORAGE,), series_uid=series_uid
    )
    series = _sorted_series(items, folder)
    if pixels:
        hu_file = np.stack([_pixels(p) for p, _ in series.items]).astype(np.float32)
    else:
        hu_file = np.zeros((0, 0, 0), np.float32)
    _, grid, flips = _to_identity(None, series.grid_file)
    hu = hu_file
    if pixels:
        axes = tuple(n for n, f in enumerate(flips) if f)
        hu = np.ascontiguousarray(np.flip(hu_file, axis=axes)) if axes else hu_file
    items_k = series.items[::-1] if flips[0] else series.items
    positions_k = series.positions[::-1] if flips[0] else series.positions
    first = series.items[0][1]
    logger.info("read CT series: %d slices, grid %s", len(items_k), grid.describe())
    return CtSeries(
        hu=hu,
        grid=grid,
        series_instance_uid=str(first.SeriesInstanceUID),
        study_instance_uid=str(_require(first, "StudyInstanceUID", series.items[0][0])),
        sop_instance_uids=tuple(str(_require(ds, "SOPInstanceUID", p)) for p, ds in items_k),
        files=tuple(p for p, _ in items_k),
        slice_positions_mm=np.array(positions_k, float),
        sop_class_uid=str(first.get("SOPClassUID", CT_IMAGE_STORAGE)),
        series_description=str(first.get("SeriesDescription", "") or ""),
        flipped_axes=flips,
        patient=_patient_info(first),
    )


# ====================================================================== PET / SUV
def _parse_da_tm(date: str, time: str) -> _dt.datetime:
    d = pydicom.valuerep.DA(str(date).strip())
    t = pydicom.valuerep.TM(str(time).strip())
    return _dt.datetime.combine(d, t).replace(tzinfo=None)  # type: ignore[arg-type]


def _parse_dt(value: str) -> _dt.datetime:
    v = pydicom.valuerep.DT(str(value).strip())
    return _dt.datetime(v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond)


def _datetime_of(ds: Dataset, prefix: str) -> _dt.datetime | None:
    """``<prefix>Date`` + ``<prefix>Time`` (or ``<prefix>DateTime``) of a dataset, or None."""
    dt_value = ds.get(f"{prefix}DateTime", None)
    if dt_value:
        return _parse_dt(str(dt_value))
    date, time = ds.get(f"{prefix}Date", None), ds.get(f"{prefix}Time", None)
    if date and time:
        return _parse_da_tm(str(date), str(time))
    return None


def read_pet_suv(
    folder: str | os.PathLike[str],
    ct_grid: ImageGrid | None = None,
    *,
    series_uid: str | None = None,
    patient_weight_kg: float | None = None,
    injected_dose_bq: float | None = None,
    injection_datetime: _dt.datetime | None = None,
    half_life_s: float | None = None,
    scan_datetime: _dt.datetime | None = None,
) -> tuple[np.ndarray, ImageGrid]:
    """Read a PET series and convert it to body-weight SUV (SUVbw), optionally on a CT grid.

    ``SUVbw = C * W / D(t)`` with ``C`` the activity concentration in Bq/mL (Units BQML,
    ``pixel * RescaleSlope + RescaleIntercept`` per slice), ``W`` the patient weight in g
    (PatientWeight, kg x 1000; 1 mL of tissue taken as 1 g) and ``D(t)`` the injected
    activity (RadionuclideTotalDose, Bq) decayed with RadionuclideHalfLife from the
    injection (RadiopharmaceuticalStartDateTime, or RadiopharmaceuticalStartTime on the
    SeriesDate) to the time the pixels are decay-corrected to:

    * DecayCorrection ``START``: the scan start; SeriesDate/SeriesTime unless it is later
      than the earliest AcquisitionDate/AcquisitionTime, which is then used (the rule of
      the QIBA/UPICT SUV vendor-neutral pseudo-code);
    * ``ADMIN``: the injection (no decay);
    * ``NONE``: each slice's own AcquisitionDate/AcquisitionTime (slice by slice).

    Parameters
    ----------
    folder : path
        Folder searched recursively for the PET series (Modality PT).
    ct_grid : ImageGrid, optional
        When given, the SUV is resampled (trilinear, :func:`rtplan.grid.resample_to_grid`)
        onto this grid; the FrameOfReferenceUIDs must match when both are known.
    series_uid : str, optional
        SeriesInstanceUID when the folder holds several PET series.
    patient_weight_kg, injected_dose_bq, injection_datetime, half_life_s, scan_datetime
        Explicit values (kg, Bq, naive datetime, s, naive datetime) that take the place of
        PatientWeight, RadionuclideTotalDose, the radiopharmaceutical start, the
        RadionuclideHalfLife and the decay-correction reference time. Without them a
        missing tag raises an error naming it.

    Returns
    -------
    suv : ndarray of float64, shape ``grid.shape``
        SUVbw (g/mL), ``[slice, row, col]``.
    grid : ImageGrid
        ``ct_grid`` when given, else the PET grid (identity direction).

    Raises
    ------
    DicomInputError
        Units other than BQML (or GML, taken as SUVbw already), a missing tag without an
        explicit value, non-attenuation-corrected images (CorrectedImage without ATTN),
        an unknown DecayCorrection, or any of the geometry errors of
        :func:`read_ct_series`.
    GridMismatchError
        PET and CT frames of reference differ.
    """
    found = _find_dicom_files(folder)
    items = _select_series(
        found, folder, modality="PT", sop_classes=(PET_IMAGE_STORAGE,), series_uid=series_uid
    )
    series = _sorted_series(items, folder)
    path0, ds0 = series.items[0]
    units = str(_require(ds0, "Units", path0)).strip().upper()
    activity = np.stack([_pixels(p) for p, _ in series.items])
    if units == "GML":
        suv_file = activity
    elif units != "BQML":
        raise DicomInputError(
            f"{path0}: tag {_tag_name('Units')} is {units!r}; SUV needs BQML (Bq/mL) images"
        )
    else:
        corrected = [str(c).upper() for c in (ds0.get("CorrectedImage", None) or [])]
        if corrected and "ATTN" not in corrected:
            raise DicomInputError(
                f"{path0}: tag {_tag_name('CorrectedImage')} {corrected} lacks ATTN; SUV needs "
                "attenuation-corrected images"
            )
        factors = _suv_factors(
            series.items,
            patient_weight_kg=patient_weight_kg,
            injected_dose_bq=injected_dose_bq,
            injection_datetime=injection_datetime,
            half_life_s=half_life_s,
            scan_datetime=scan_datetime,
        )
        suv_file = activity * factors[:, None, None]
    suv, pet_grid, _ = _to_identity(suv_file, series.grid_file)
    suv = np.ascontiguousarray(suv, dtype=np.float64)
    logger.info("read PET series: %d slices, grid %s", suv.shape[0], pet_grid.describe())
    if ct_grid is None:
        return suv, pet_grid
    fa, fb = pet_grid.frame_of_reference_uid, ct_grid.frame_of_reference_uid
    if fa is not None and fb is not None and fa != fb:
        raise GridMismatchError(
            f"the PET series in {folder} has FrameOfReferenceUID {fa} but the CT grid has {fb}; "
            "the images are not registered (register them first)"
        )
    return resample_to_grid(suv, pet_grid, ct_grid, order=1), ct_grid


def _suv_factors(
    items: list[tuple[Path, Dataset]],
    *,
    patient_weight_kg: float | None,
    injected_dose_bq: float | None,
    injection_datetime: _dt.datetime | None,
    half_life_s: float | None,
    scan_datetime: _dt.datetime | None,
) -> np.ndarray:
    """SUVbw factor ``W / D(t)`` (g/Bq) of every slice (sorted order)."""
    path0, ds0 = items[0]
    if patient_weight_kg is None:
        w = ds0.get("PatientWeight", None)
        if w is None or str(w).strip() == "" or float(w) <= 0:
            raise DicomInputError(
                f"{path0}: tag {_tag_name('PatientWeight')} is missing or zero; pass "
                "patient_weight_kg="
            )
        patient_weight_kg = float(w)
    if patient_weight_kg <= 0:
        raise InvalidInputError(f"patient_weight_kg must be > 0, got {patient_weight_kg}")
    seq = ds0.get("RadiopharmaceuticalInformationSequence", None)
    info = seq[0] if seq else Dataset()
    seq_name = _tag_name("RadiopharmaceuticalInformationSequence")
    if injected_dose_bq is None:
        d = info.get("RadionuclideTotalDose", None)
        if d is None or str(d).strip() == "" or float(d) <= 0:
            raise DicomInputError(
                f"{path0}: tag {_tag_name('RadionuclideTotalDose')} in {seq_name} is missing "
                "or zero; pass injected_dose_bq="
            )
        injected_dose_bq = float(d)
    decay = str(ds0.get("DecayCorrection", "") or "").strip().upper()
    if not decay:
        raise DicomInputError(f"{path0}: tag {_tag_name('DecayCorrection')} is missing")
    if decay not in ("START", "ADMIN", "NONE"):
        raise DicomInputError(
            f"{path0}: tag {_tag_name('DecayCorrection')} is {decay!r}; expected START, ADMIN "
            "or NONE"
        )
    base = injected_dose_bq / (patient_weight_kg * 1000.0)  # Bq per g
    if decay == "ADMIN":
        return np.full(len(items), 1.0 / base)
    if half_life_s is None:
        h = info.get("RadionuclideHalfLife", None)
        if h is None or str(h).strip() == "" or float(h) <= 0:
            raise DicomInputError(
                f"{path0}: tag {_tag_name('RadionuclideHalfLife')} in {seq_name} is missing; "
                "pass half_life_s="
            )
        half_life_s = float(h)
    series_dt = _datetime_of(ds0, "Series")
    if injection_datetime is None:
        injection_datetime = _injection_datetime(info, series_dt, path0)
    if decay == "START":
        if scan_datetime is None:
            acq = [t for t in (_datetime_of(ds, "Acquisition") for _, ds in items) if t]
            candidates = []
            if series_dt is not None:
                candidates.append(series_dt)
            if acq and (series_dt is None or series_dt > min(acq)):
                candidates = [min(acq)]
            if not candidates:
                raise DicomInputError(
                    f"{path0}: tags {_tag_name('SeriesTime')} and {_tag_name('AcquisitionTime')} "
                    "are missing; pass scan_datetime="
                )
            scan_datetime = candidates[0]
        times = [scan_datetime] * len(items)
    else:  # NONE: each slice at its own acquisition time
        times = []
        for path, ds in items:
            t = _datetime_of(ds, "Acquisition") or scan_datetime
            if t is None:
                raise DicomInputError(
                    f"{path}: tag {_tag_name('AcquisitionTime')} is missing (DecayCorrection "
                    "NONE needs each slice's time); pass scan_datetime="
                )
            times.append(t)
    factors = []
    for t in times:
        elapsed = (t - injection_datetime).total_seconds()
        if elapsed < 0:
            raise DicomInputError(
                f"{path0}: the radiopharmaceutical start is {-elapsed:.0f} s after the scan "
                f"reference time; check {_tag_name('RadiopharmaceuticalStartTime')}"
            )
        factors.append(1.0 / (base * math.exp(-math.log(2.0) * elapsed / half_life_s)))
    return np.asarray(factors)


def _injection_datetime(info: Dataset, series_dt: _dt.datetime | None, path0: Path) -> _dt.datetime:
    value = info.get("RadiopharmaceuticalStartDateTime", None)
    if value:
        return _parse_dt(str(value))
    start = info.get("RadiopharmaceuticalStartTime", None)
    if not start or series_dt is None:
        raise DicomInputError(
            f"{path0}: tags {_tag_name('RadiopharmaceuticalStartDateTime')} and "
            f"{_tag_name('RadiopharmaceuticalStartTime')} (with SeriesDate) are missing; pass "
            "injection_datetime="
        )
    t = pydicom.valuerep.TM(str(start).strip())
    inj = _dt.datetime.combine(series_dt.date(), t).replace(tzinfo=None)  # type: ignore[arg-type]
    if inj > series_dt:  # injected before midnight, scanned after
        inj -= _dt.timedelta(days=1)
    return inj


# ====================================================================== output safety
def _new_uid(seed: str | None, *parts: object) -> str:
    if seed is None:
        return generate_uid()
    return generate_uid(entropy_srcs=[seed, *(str(p) for p in parts)])


def _check_output(
    path: Path,
    *,
    overwrite: bool,
    inputs: Sequence[Path],
    input_folder: Path | None,
    allow_input_folder: bool,
) -> None:
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
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(path) as tmp:
        pydicom.dcmwrite(tmp, ds, enforce_file_format=True)
    return path


def _now() -> tuple[str, str]:
    now = _dt.datetime.now()
    return now.strftime("%Y%m%d"), now.strftime("%H%M%S")


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


def _ds_strs(values: np.ndarray) -> list[str]:
    """Vectorised :func:`_ds_str` for coordinates (|value| < 1e9 mm)."""
    v = np.round(np.asarray(values, float), 4)
    if v.size and np.abs(v).max() >= 1e9:
        return [_ds_str(x) for x in v]
    s = np.char.rstrip(np.char.rstrip(np.char.mod("%.4f", v), "0"), ".")
    s = np.where((s == "-0") | (s == ""), "0", s)
    return s.tolist()


_TAG_REF_SOP_CLASS = pydicom.tag.Tag("ReferencedSOPClassUID")
_TAG_REF_SOP_INSTANCE = pydicom.tag.Tag("ReferencedSOPInstanceUID")
_TAG_GEOMETRIC_TYPE = pydicom.tag.Tag("ContourGeometricType")
_TAG_N_POINTS = pydicom.tag.Tag("NumberOfContourPoints")
_TAG_CONTOUR_NUMBER = pydicom.tag.Tag("ContourNumber")
_TAG_CONTOUR_DATA = pydicom.tag.Tag("ContourData")


def _raw_element(tag: pydicom.tag.BaseTag, vr: str, value: bytes) -> Any:
    """A raw explicit-VR little-endian element holding an already valid, encoded value.

    Setting thousands of contour items (tens of thousands of coordinates) through
    pydicom's value conversion and validation takes seconds; the values here are valid
    (DS text from :func:`_ds_str`, UIDs, integers), so they are stored as bytes, padded to
    an even length, and written as they are.
    """
    if len(value) % 2:
        value += b"\0" if vr == "UI" else b" "
    return pydicom.dataelem.RawDataElement(tag, vr, len(value), value, 0, False, True)


def _file_meta(sop_class: str, sop_instance: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_instance
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    meta.ImplementationClassUID = pydicom.uid.PYDICOM_IMPLEMENTATION_UID
    meta.ImplementationVersionName = f"PYDICOM {pydicom.__version__}"[:16]
    return meta


def _check_lo(value: str, name: str, limit: int = 64) -> str:
    if len(value) > limit or "\\" in value:
        raise InvalidInputError(
            f"{name} must be at most {limit} characters without '\\', got {value!r}"
        )
    return value


# ====================================================================== CT out
def write_ct_series(
    hu: npt.ArrayLike,
    grid: ImageGrid,
    folder: str | os.PathLike[str],
    *,
    patient_name: str = "RTPLAN^PHANTOM",
    patient_id: str = "RTPLAN-PHANTOM-0001",
    series_description: str = "rtplan synthetic CT",
    study_instance_uid: str | None = None,
    uid_seed: str | None = None,
) -> Path:
    """Write a CT image series (one CT Image Storage file per slice).

    Parameters
    ----------
    hu : array_like, shape ``grid.shape``
        Hounsfield units, ``[slice, row, col]``. Stored as int16 with RescaleSlope 1 and
        RescaleIntercept 0 (rounded to 1 HU) when the values fit, else with a larger slope.
    grid : ImageGrid
        Geometry; a flipped axial grid is written flipped back to the identity direction.
        Its FrameOfReferenceUID is used (a new one when ``None``).
    folder : path
        Destination; must not exist or be empty. The files are written in a temporary
        folder next to it and renamed into place.
    patient_name, patient_id : str
        Defaults name an obvious phantom, not a person.
    series_description : str
        SeriesDescription (at most 64 characters).
    study_instance_uid : str, optional
        StudyInstanceUID to share with other objects; new by default.
    uid_seed : str, optional
        Makes every generated UID deterministic (reproducible tests).

    Returns
    -------
    Path
        ``folder``.

    Raises
    ------
    FileExistsError
        ``folder`` exists and is not empty.
    ValueError
        ``hu`` does not match the grid or holds non-finite values.
    """
    arr = np.asarray(hu, dtype=np.float64)
    if arr.shape != grid.shape:
        raise InvalidInputError(f"hu has shape {arr.shape} but the grid has shape {grid.shape}")
    if not np.all(np.isfinite(arr)):
        raise InvalidInputError("hu holds NaN or infinite values")
    _check_lo(series_description, "series_description")
    arr, g, _ = _to_identity(arr, grid)
    dest = Path(folder)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise OutputExistsError(f"{dest} exists and is not an empty folder")
    lo, hi = float(arr.min()), float(arr.max())
    slope, intercept = 1.0, 0.0
    if lo < -32768 or hi > 32767:
        slope = max((hi - lo) / 65000.0, 1.0)
        intercept = float(np.floor(lo))
    stored = np.clip(np.rint((arr - intercept) / slope), -32768, 32767).astype(np.int16)
    study_uid = study_instance_uid or _new_uid(uid_seed, "study")
    series_uid = _new_uid(uid_seed, "ct-series")
    for_uid = g.frame_of_reference_uid or _new_uid(uid_seed, "for")
    date, time = _now()
    dest.parent.mkdir(parents=True, exist_ok=True)
    # os.replace renames onto an existing empty folder (checked above) on POSIX
    with atomic_path(dest) as tmpdir:
        tmpdir.mkdir()  # honours the umask, unlike mkdtemp
        nz, ny, nx = g.shape
        sz, sy, sx = g.spacing_mm
        for k in range(nz):
            sop_uid = _new_uid(uid_seed, "ct", k)
            ds = Dataset()
            ds.file_meta = _file_meta(CT_IMAGE_STORAGE, sop_uid)
            ds.SpecificCharacterSet = "ISO_IR 100"
            ds.ImageType = ["DERIVED", "SECONDARY", "AXIAL"]
            ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
            ds.SOPClassUID = CT_IMAGE_STORAGE
            ds.SOPInstanceUID = sop_uid
            ds.StudyDate, ds.StudyTime = date, time
            ds.SeriesDate, ds.SeriesTime = date, time
            ds.ContentDate, ds.ContentTime = date, time
            ds.AccessionNumber = ""
            ds.Modality = "CT"
            ds.Manufacturer = _MANUFACTURER
            ds.ReferringPhysicianName = ""
            ds.StudyDescription = "rtplan"
            ds.SeriesDescription = series_description
            ds.DerivationDescription = "synthetic image written by rtplan"
            ds.PatientName = patient_name
            ds.PatientID = patient_id
            ds.PatientBirthDate = ""
            ds.PatientSex = "O"
            ds.BodyPartExamined = "PELVIS"
            ds.KVP = ""
            ds.SliceThickness = _ds_geom(sz)
            ds.PatientPosition = "HFS"
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.StudyID = "1"
            ds.SeriesNumber = 1
            ds.AcquisitionNumber = 1
            ds.InstanceNumber = k + 1
            pos = g.index_to_lps([k, 0, 0])
            ds.ImagePositionPatient = [_ds_geom(v) for v in pos]
            ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
            ds.FrameOfReferenceUID = for_uid
            ds.PositionReferenceIndicator = ""
            ds.SliceLocation = _ds_geom(pos[2])
            ds.SamplesPerPixel = 1
            ds.PhotometricInterpretation = "MONOCHROME2"
            ds.Rows, ds.Columns = ny, nx
            ds.PixelSpacing = [_ds_geom(sy), _ds_geom(sx)]
            ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
            ds.PixelRepresentation = 1
            ds.RescaleIntercept = _ds_geom(intercept)
            ds.RescaleSlope = _ds_geom(slope)
            ds.RescaleType = "HU"
            ds.PixelData = np.ascontiguousarray(stored[k]).tobytes()
            pydicom.dcmwrite(tmpdir / f"CT_{k + 1:04d}.dcm", ds, enforce_file_format=True)
    logger.info("wrote CT series: %d slices", g.shape[0])
    return dest


# ====================================================================== contour tracing
def _trace_stack(mask3d: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The loops of :func:`_trace_slice` for every slice of a ``[slice, row, col]`` mask.

    All slices are traced at once (one vectorised pass instead of one per slice). Returns
    ``(points, loop_slice, offsets)``: ``points`` ``(n, 2)`` of ``(i, j)`` pixel-corner
    coordinates of all loops end to end, ``loop_slice`` the slice index of every loop and
    ``offsets`` (one more than the loops) where each loop starts in ``points``. Loops are
    ordered by slice, then as :func:`_trace_slice` orders them within a slice.
    """
    m = np.pad(np.asarray(mask3d, bool), ((0, 0), (1, 1), (1, 1)))
    _nz, ny, nx = m.shape
    # corners (cx, cy) of slice k in padded pixel-corner coordinates, 0..nx, 0..ny;
    # id = k * plane + cy * w + cx
    w = nx + 1
    plane = (ny + 1) * w
    # boundary pixels (inside, with at least one of its 4 neighbours outside), in
    # (k, j, i) order, as flat indices of the padded mask
    inside = m[:, 1:-1, 1:-1]
    interior = inside & m[:, :-2, 1:-1]
    interior &= m[:, 2:, 1:-1]
    interior &= m[:, 1:-1, :-2]
    interior &= m[:, 1:-1, 2:]
    np.not_equal(inside, interior, out=interior)  # inside and not interior
    kk, rest = np.divmod(np.flatnonzero(interior), (ny - 2) * (nx - 2))
    jj, ii = np.divmod(rest, nx - 2)
    flat = (kk * ny + jj + 1) * nx + ii + 1
    base = kk * plane + (jj + 1) * w + (ii + 1)  # corner (ip, jp) of each pixel
    m_flat = m.reshape(-1)
    # boundary sides by direction (0 = +i top, 1 = +j right, 2 = -i bottom, 3 = -j left);
    # within a direction the sides come in (k, j, i) order, as _trace_slice lists them
    starts, ends = [], []
    for code, step in enumerate((-nx, 1, nx, -1)):
        b = base[~m_flat[flat + step]]
        if code == 0:  # top side, cy = jp, from cx = ip to ip + 1
            s, e = b, b + 1
        elif code == 1:  # right side, cx = ip + 1, cy jp -> jp + 1
            s, e = b + 1, b + w + 1
        elif code == 2:  # bottom side, cy = jp + 1, cx ip + 1 -> ip
            s, e = b + w + 1, b + w
        else:  # left side, cx = ip, cy jp + 1 -> jp
            s, e = b + w, b
        starts.append(s)
        ends.append(e)
    dirn = np.repeat(np.arange(4), [len(s) for s in starts])
    start = np.concatenate(starts)
    end = np.concatenate(ends)
    n_edges = start.size
    if n_edges == 0:
        return np.zeros((0, 2)), np.zeros(0, np.int64), np.zeros(1, np.int64)
    # successor of each edge: the edge leaving its end corner (at a saddle corner, the one
    # turning right, dir + 1, which keeps to the same pixel: diagonal pixels stay apart)
    order = np.argsort(start, kind="stable")
    sorted_start = start[order]
    first = np.searchsorted(sorted_start, end, side="left")
    cand1 = order[first]
    succ = cand1.copy()
    two = np.flatnonzero(first + 1 < n_edges)
    two = two[sorted_start[first[two] + 1] == end[two]]
    if two.size:
        cand2 = order[first[two] + 1]
        want = (dirn[two] + 1) % 4
        succ[two] = np.where(dirn[cand1[two]] == want, cand1[two], cand2)
    # the successor map is a permutation whose cycles are the loops: label each cycle by
    # its smallest edge (connected components, then the minimum per component) ...
    from scipy.sparse import csr_matrix
    from scipy.sparse.csgraph import connected_components

    idx_all = np.arange(n_edges)
    graph = csr_matrix((np.ones(n_edges, np.int8), (idx_all, succ)), shape=(n_edges, n_edges))
    n_comp, comp = connected_components(graph, directed=True, connection="weak")
    root_of = np.full(n_comp, n_edges, np.int64)
    np.minimum.at(root_of, comp, idx_all)
    label = root_of[comp]
    # ... and rank the edges along it by pointer jumping (vectorised)
    pred = np.empty(n_edges, np.int64)
    pred[succ] = idx_all
    nxt = succ.copy()
    nxt[pred[root_of]] = -1  # open each cycle just before its root
    dist = (nxt != -1).astype(np.int64)
    ptr = nxt
    sel = np.flatnonzero(ptr != -1)
    while sel.size:
        p = ptr[sel]
        dist[sel] += dist[p]
        ptr[sel] = ptr[p]
        sel = sel[ptr[sel] != -1]
    loop_k = start[root_of] // plane
    # by slice, then loop (smallest edge first), root first, then along the loop
    order = np.lexsort((-dist, label, loop_k[comp]))
    corner = dirn[order] != dirn[pred[order]]  # keep the points where the direction changes
    kept = order[corner]
    rem = start[kept] % plane
    cy, cx = np.divmod(rem, w)
    # padded corner (cx, cy) -> unpadded pixel-index coordinates (cx - 1.5, cy - 1.5)
    pts = np.column_stack([cx - 1.5, cy - 1.5]).astype(float)
    lab_kept = label[kept]
    breaks = np.flatnonzero(lab_kept[1:] != lab_kept[:-1]) + 1
    offsets = np.concatenate([[0], breaks, [len(kept)]]).astype(np.int64)
    loop_slice = start[lab_kept[offsets[:-1]]] // plane
    return pts, loop_slice, offsets


def _trace_slice(mask2d: np.ndarray) -> list[np.ndarray]:
    """Closed loops along the pixel edges of a 2-D mask, as ``(n, 2)`` arrays of ``(i, j)``.

    Coordinates are fractional column/row indices of pixel corners (``-0.5`` = the left
    edge of column 0). Outer boundaries, holes and islands are separate loops; filling
    them even-odd gives the mask back exactly (pixel centres are never on a loop). Two
    pixels touching only at a corner belong to different loops. Collinear points are
    dropped.
    """
    pts, _, offsets = _trace_stack(np.asarray(mask2d, bool)[None])
    return np.split(pts, offsets[1:-1]) if len(offsets) > 1 else []


def _contours_of(
    structure: Structure, grid: ImageGrid, slice_z_mm: np.ndarray
) -> list[tuple[int, int, bytes]]:
    """``(slice k, number of points, ContourData bytes)`` for every loop of a structure.

    The loops of all slices are traced at once (:func:`_trace_stack`, on the structure's
    bounding box), mapped to LPS together, with z from the referenced slice's own
    ImagePositionPatient, and formatted as DS text (:func:`_ds_str` rules) in one pass:
    the coordinates of voxel corners take few distinct values, so each distinct value is
    formatted once.
    """
    if structure.is_empty:
        return []
    bbox = structure.bbox
    assert bbox is not None
    k0, j0, i0 = bbox[0].start, bbox[1].start, bbox[2].start
    pts, loop_slice, offsets = _trace_stack(structure.cropped_mask)
    if not len(loop_slice):
        return []
    lengths = np.diff(offsets)
    k_pts = np.repeat(loop_slice + k0, lengths)
    idx = np.column_stack([k_pts.astype(float), pts[:, 1] + j0, pts[:, 0] + i0])
    xyz = grid.index_to_lps(idx)
    xyz[:, 2] = slice_z_mm[k_pts]  # the referenced slice's own ImagePositionPatient
    unique, inverse = np.unique(xyz.reshape(-1), return_inverse=True)
    texts = np.array(_ds_strs(unique), dtype=object)[inverse.reshape(-1)].tolist()
    bounds = (3 * offsets).tolist()
    return [
        (k0 + k, (b - a) // 3, "\\".join(texts[a:b]).encode("ascii"))
        for k, a, b in zip(loop_slice.tolist(), bounds[:-1], bounds[1:])
    ]


# ====================================================================== RTSTRUCT out
def write_rtstruct(
    structures: StructureSet | Iterable[Structure],
    ct_folder: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    label: str = "rtplan",
    description: str | None = None,
    series_description: str = "rtplan structures",
    ct_series_uid: str | None = None,
    overwrite: bool = False,
    allow_input_folder: bool = False,
    uid_seed: str | None = None,
) -> Path:
    """Write structures as a DICOM RT Structure Set referencing a CT series.

    rt-utils builds the dataset skeleton and ROI bookkeeping
    (``RTStructBuilder.create_new(dicom_series_path=...)`` on a staging folder holding
    only the chosen CT series, then ``add_roi`` per structure with a 1 x 1 pixel token
    mask set on the structure's first and last slice, since its contours are discarded);
    rtplan checks that rt-utils referenced the same CT slices, then replaces every contour
    with its own, traced along voxel edges (outer boundaries, holes and islands as
    separate CLOSED_PLANAR contours whose even-odd fill is the mask), each on the
    ImagePositionPatient z of the CT slice it references, and fixes the dataset:
    top-level FrameOfReferenceUID and PositionReferenceIndicator, ReferringPhysicianName,
    AccessionNumber, OperatorsName, RT ROI Interpreted Type from
    :attr:`Structure.interpreted_type`, StructureSetLabel, StructureSetDate/Time,
    Manufacturer, and DS values of at most 16 characters.

    Parameters
    ----------
    structures : StructureSet or iterable of Structure
        Structures on the CT's grid (within :data:`~rtplan.grid.GRID_ATOL_MM`). Empty
        structures are written as ROIs without contours.
    ct_folder : path
        Folder of the CT series the structures were drawn on.
    path : path
        Output file.
    label : str
        StructureSetLabel (at most 16 characters).
    description : str, optional
        StructureSetDescription.
    series_description : str
        SeriesDescription of the new RTSTRUCT series (at most 64 characters).
    ct_series_uid : str, optional
        SeriesInstanceUID of the CT series when ``ct_folder`` holds several.
    overwrite : bool
        Replace an existing output file (never an input file).
    allow_input_folder : bool
        Allow writing into ``ct_folder`` (or a folder inside it).
    uid_seed : str, optional
        Makes the new UIDs deterministic.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    ValueError
        Duplicate ROI names (case-insensitive), no structures, a label that is too long,
        or an output path in the input folder.
    GridMismatchError
        A structure is not on the CT's grid or frame of reference.
    FileExistsError
        ``path`` exists and ``overwrite`` is False.
    """
    from rt_utils import RTStructBuilder  # heavy (opencv); imported on use

    items = list(structures.values()) if isinstance(structures, StructureSet) else list(structures)
    if not items:
        raise InvalidInputError("write_rtstruct needs at least one structure")
    seen: dict[str, str] = {}
    for s in items:
        if not isinstance(s, Structure):
            raise TypeError(f"expected Structure objects, got {type(s).__name__}")
        key = s.name.strip().lower()
        if key in seen:
            raise InvalidInputError(
                f"duplicate ROI name {s.name!r} (also {seen[key]!r}); ROI names must be unique"
            )
        _check_lo(s.name, f"ROI name {s.name!r}")
        seen[key] = s.name
    _check_lo(label, "label", 16)
    _check_lo(series_description, "series_description")
    out = Path(path)
    ct = read_ct_series(ct_folder, series_uid=ct_series_uid, pixels=False)
    _check_output(
        out,
        overwrite=overwrite,
        inputs=ct.files,
        input_folder=Path(ct_folder),
        allow_input_folder=allow_input_folder,
    )
    for s in items:
        if not ct.grid.equals(s.grid):
            raise GridMismatchError(
                f"structure {s.name!r} is on {s.grid.describe()} but the CT series is on "
                f"{ct.grid.describe()}"
                + (
                    f" (FrameOfReferenceUID {s.grid.frame_of_reference_uid} vs "
                    f"{ct.grid.frame_of_reference_uid})"
                    if s.grid.frame_of_reference_uid
                    and s.grid.frame_of_reference_uid != ct.grid.frame_of_reference_uid
                    else ""
                )
            )
    slice_z = ct.slice_positions_mm[:, 2]
    with tempfile.TemporaryDirectory(prefix="rtplan-rtutils-") as staging:
        for n, f in enumerate(ct.files):
            link = Path(staging) / f"{n:05d}.dcm"
            try:
                link.symlink_to(f.resolve())
            except OSError:  # no symlinks on this file system
                shutil.copy2(f, link)
        with (
            contextlib.ExitStack() as stack,
            contextlib.redirect_stdout(io.StringIO()),
            warnings.catch_warnings(),
        ):
            # rt-utils prints progress and uses pydicom attributes deprecated in pydicom 3
            warnings.simplefilter("ignore", DeprecationWarning)
            stack.enter_context(pydicom.config.disable_value_validation())
            try:
                rts = RTStructBuilder.create_new(dicom_series_path=staging)
            except AttributeError as exc:  # rt-utils reads some Type 2 tags unconditionally
                raise DicomInputError(
                    f"rt-utils cannot build an RTSTRUCT on the CT series in {ct_folder}: a tag "
                    f"it needs is missing ({exc})"
                ) from exc
            # rt-utils orders its slices by position along the normal: our file order
            ru_sops = [str(d.SOPInstanceUID) for d in rts.series_data]
            file_order_sops = list(
                ct.sop_instance_uids[::-1] if ct.flipped_axes[0] else ct.sop_instance_uids
            )
            if ru_sops != file_order_sops:
                raise RtplanError(
                    "rt-utils ordered the CT slices differently from rtplan; refusing to write"
                )
            for s in items:
                rts.add_roi(mask=_token_mask(s, ct), color=list(s.color), name=s.name)
    ds = rts.ds
    _fix_rtstruct(ds, ct, items, slice_z, label, description, series_description, uid_seed)
    _atomic_write(ds, out)
    logger.info("wrote RTSTRUCT: %d ROIs", len(items))
    return out


def _token_slices(structure: Structure) -> list[int]:
    """The first and last slice ``k`` a structure occupies (none when it is empty)."""
    bbox = structure.bbox
    if structure.is_empty or bbox is None:
        return []
    return sorted({bbox[0].start, bbox[0].stop - 1})


def _token_mask(structure: Structure, ct: CtSeries) -> np.ndarray:
    """rt-utils' input for one ROI: a 1 x 1 pixel mask set on the structure's end slices.

    rt-utils' own contours are replaced (they run through voxel centres), so tracing the
    full mask with rt-utils would only cost time (about 25 s for the 41 structures of the
    512 x 512 x 105 atlas), and so would any full-size placeholder (rt-utils sums and
    traces every slice of it with OpenCV). rt-utils checks only the number of slices of
    the mask, so a ``(1, 1, nz)`` mask set on the first and last occupied slice keeps its
    bookkeeping (ROI number, name, colour, observation) at almost no cost and lets
    :func:`_fix_rtstruct` check that rt-utils maps the slices to the same SOP instances as
    rtplan. Layout: rt-utils' ``[row, col, slice]`` with slices in file order.
    """
    nz = ct.grid.shape[0]
    token = np.zeros((1, 1, nz), bool)
    occupied = np.asarray(_token_slices(structure), np.int64)
    if ct.flipped_axes[0]:
        occupied = nz - 1 - occupied
    token[0, 0, occupied] = True
    return token


def _fix_rtstruct(
    ds: Dataset,
    ct: CtSeries,
    items: list[Structure],
    slice_z: np.ndarray,
    label: str,
    description: str | None,
    series_description: str,
    uid_seed: str | None,
) -> None:
    """Correct rt-utils' dataset in place (see :func:`write_rtstruct`)."""
    for_uid = ct.grid.frame_of_reference_uid
    if not for_uid:
        raise DicomInputError(f"the CT series in {ct.folder} has no FrameOfReferenceUID")
    sop_uid = _new_uid(uid_seed, "rtstruct")
    date, time = _now()
    ds.file_meta = _file_meta(RTSTRUCT_STORAGE, sop_uid)
    ds.SOPInstanceUID = sop_uid
    ds.SeriesInstanceUID = _new_uid(uid_seed, "rtstruct-series")
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.StructureSetDate, ds.StructureSetTime = date, time
    ds.SeriesDate, ds.SeriesTime = date, time
    ds.StructureSetLabel = label
    if description:
        ds.StructureSetDescription = description
    ds.SeriesDescription = series_description
    ds.Manufacturer = _MANUFACTURER
    ds.ManufacturerModelName = "rtplan (RTSTRUCT skeleton by rt-utils)"
    if "InstitutionName" in ds:
        del ds.InstitutionName
    # Type 1 / Type 2 attributes rt-utils leaves out
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = ""
    p = ct.patient
    ds.PatientName = p.name
    ds.PatientID = p.patient_id
    ds.PatientBirthDate = p.birth_date
    ds.PatientSex = p.sex
    ds.StudyDate, ds.StudyTime = p.study_date, p.study_time
    ds.StudyID = p.study_id
    ds.ReferringPhysicianName = p.referring_physician_name
    ds.AccessionNumber = p.accession_number
    ds.OperatorsName = ""
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    for kw in ("PatientAge", "PatientSize", "PatientWeight", "StudyDescription"):
        if kw in ds and (ds.get(kw) in ("", None)):
            delattr(ds, kw)
    if p.study_description:
        ds.StudyDescription = p.study_description
    # referenced frame of reference / study / series
    rfor = ds.ReferencedFrameOfReferenceSequence[0]
    rfor.FrameOfReferenceUID = for_uid
    rstudy = rfor.RTReferencedStudySequence[0]
    rstudy.ReferencedSOPClassUID = _STUDY_COMPONENT_CLASS
    rstudy.ReferencedSOPInstanceUID = ct.study_instance_uid
    rseries = rstudy.RTReferencedSeriesSequence[0]
    rseries.SeriesInstanceUID = ct.series_instance_uid
    cis = DicomSequence()
    for sop in ct.sop_instance_uids:
        item = Dataset()
        item.ReferencedSOPClassUID = ct.sop_class_uid
        item.ReferencedSOPInstanceUID = sop
        cis.append(item)
    rseries.ContourImageSequence = cis
    # ROIs: our contours, interpreted types, clean observations
    sop_class = ct.sop_class_uid.encode("ascii")
    sop_bytes = [uid.encode("ascii") for uid in ct.sop_instance_uids]
    by_number = {int(r.ReferencedROINumber): r for r in ds.ROIContourSequence}
    for n, (s, ssroi, obs) in enumerate(
        zip(items, ds.StructureSetROISequence, ds.RTROIObservationsSequence), start=1
    ):
        if str(ssroi.ROIName) != s.name or int(ssroi.ROINumber) != n:
            raise RtplanError(f"rt-utils ROI bookkeeping out of step at ROI {s.name!r}")
        ssroi.ReferencedFrameOfReferenceUID = for_uid
        if "ROIDescription" in ssroi and not ssroi.ROIDescription:
            del ssroi.ROIDescription
        obs.ObservationNumber = n
        obs.ReferencedROINumber = n
        obs.RTROIInterpretedType = s.interpreted_type
        obs.ROIInterpreter = ""
        if "ROIObservationDescription" in obs:
            del obs.ROIObservationDescription
        roi = by_number[n]
        roi.ReferencedROINumber = n
        roi.ROIDisplayColor = [int(c) for c in s.color]
        ru_slices = {
            str(c.ContourImageSequence[0].ReferencedSOPInstanceUID)
            for c in roi.get("ContourSequence", [])
        }
        contours = _contours_of(s, ct.grid, slice_z)
        ours = {ct.sop_instance_uids[k] for k in _token_slices(s)}
        if ru_slices != ours:
            raise RtplanError(
                f"ROI {s.name!r}: rt-utils and rtplan contour different CT slices; refusing to "
                "write"
            )
        seq = DicomSequence()
        for number, (k, n_points, text) in enumerate(contours, start=1):
            # raw explicit-VR elements: written as they are, without pydicom's per-value
            # conversion and validation (thousands of contour items per structure set)
            img = Dataset()
            img[_TAG_REF_SOP_CLASS] = _raw_element(_TAG_REF_SOP_CLASS, "UI", sop_class)
            img[_TAG_REF_SOP_INSTANCE] = _raw_element(_TAG_REF_SOP_INSTANCE, "UI", sop_bytes[k])
            c = Dataset()
            c.ContourImageSequence = DicomSequence([img])
            c[_TAG_GEOMETRIC_TYPE] = _raw_element(_TAG_GEOMETRIC_TYPE, "CS", b"CLOSED_PLANAR")
            c[_TAG_N_POINTS] = _raw_element(_TAG_N_POINTS, "IS", b"%d" % n_points)
            c[_TAG_CONTOUR_NUMBER] = _raw_element(_TAG_CONTOUR_NUMBER, "IS", b"%d" % number)
            c[_TAG_CONTOUR_DATA] = _raw_element(_TAG_CONTOUR_DATA, "DS", text)
            # mark them so the writer copies the bytes instead of decoding them
            for item in (img, c):
                item.set_original_encoding(False, True, item._character_set)
            seq.append(c)
        if len(seq):
            roi.ContourSequence = seq
        elif "ContourSequence" in roi:
            del roi.ContourSequence
    ds.ApprovalStatus = "UNAPPROVED"


# ====================================================================== RTSTRUCT in
def _handle_invalid(message: str, on_invalid: str, exc: type[Exception] = DicomInputError) -> None:
    if on_invalid == "raise":
        raise exc(message)
    if on_invalid == "warn":
        warnings.warn(message, RtplanWarning, stacklevel=3)


def _contour_data(contour: Dataset) -> np.ndarray:
    """ContourData as an ``(n, 3)`` float array, parsed from the raw bytes when possible.

    Converting every value to a pydicom DSfloat costs seconds for a large structure set;
    the raw DS text is parsed with numpy instead.
    """
    tag = pydicom.tag.Tag(0x3006, 0x0050)
    if tag not in contour:
        return np.zeros((0, 3))
    elem = contour.get_item(tag)
    if isinstance(elem, pydicom.dataelem.RawDataElement) and elem.value is not None:
        text = elem.value.decode("ascii", errors="replace").strip(" \x00")
        values = np.array(text.split("\\"), dtype=float) if text else np.zeros(0)
    else:
        values = np.asarray(contour.ContourData, dtype=float)
    if values.size % 3:
        raise DicomInputError(f"ContourData has {values.size} values, not a multiple of 3")
    return values.reshape(-1, 3)


def _fill_polygons(polys_ji: list[np.ndarray], ny: int, nx: int) -> np.ndarray:
    """Even-odd scanline fill of polygons given as ``(n, 2)`` arrays of ``(j, i)`` indices.

    A pixel ``(j, i)`` is inside when its centre lies inside an odd number of polygons.
    Only the rows each edge spans are visited.
    """
    y0s, x0s, y1s, x1s = [], [], [], []
    for p in polys_ji:
        if len(p) < 3:
            continue
        q = np.roll(p, -1, axis=0)
        y0s.append(p[:, 0])
        x0s.append(p[:, 1])
        y1s.append(q[:, 0])
        x1s.append(q[:, 1])
    out = np.zeros((ny, nx), bool)
    if not y0s:
        return out
    y0, x0 = np.concatenate(y0s), np.concatenate(x0s)
    y1, x1 = np.concatenate(y1s), np.concatenate(x1s)
    ylo, yhi = np.minimum(y0, y1), np.maximum(y0, y1)
    # rows j with ylo <= j < yhi, clipped to the image
    jstart = np.clip(np.ceil(ylo), 0, ny).astype(np.int64)
    jstop = np.clip(np.ceil(yhi), 0, ny).astype(np.int64)
    counts = np.maximum(jstop - jstart, 0)
    total = int(counts.sum())
    if total == 0:
        return out
    edge = np.repeat(np.arange(len(y0)), counts)
    offsets = np.arange(total) - np.repeat(np.cumsum(counts) - counts, counts)
    rows = jstart[edge] + offsets
    t = (rows - y0[edge]) / (y1[edge] - y0[edge])
    xs = x0[edge] + t * (x1[edge] - x0[edge])
    order = np.lexsort((xs, rows))
    rows, xs = rows[order], xs[order]
    # crossings per row are even for closed polygons; pair them up row by row
    _row_ids, row_start, row_count = np.unique(rows, return_index=True, return_counts=True)
    if np.any(row_count % 2):
        # cannot happen for closed polygons; drop the unmatched last crossing of such rows
        keep = np.ones(len(rows), bool)
        keep[(row_start + row_count - 1)[row_count % 2 == 1]] = False
        rows, xs = rows[keep], xs[keep]
    a_rows, a = rows[0::2], xs[0::2]
    b = xs[1::2]
    ia = np.clip(np.ceil(a), 0, nx).astype(np.int64)  # first centre with i >= a
    ib = np.clip(np.ceil(b), 0, nx).astype(np.int64)  # first centre with i >= b
    # fill only the bounding box of the spans
    r0, r1 = int(a_rows.min()), int(a_rows.max()) + 1
    c0, c1 = int(ia.min()), int(ib.max())
    if c1 <= c0:
        return out
    diff = np.zeros((r1 - r0, c1 - c0 + 1), np.int32)
    np.add.at(diff, (a_rows - r0, ia - c0), 1)
    np.add.at(diff, (a_rows - r0, ib - c0), -1)
    out[r0:r1, c0:c1] = np.cumsum(diff[:, :-1], axis=1) > 0
    return out


def read_rtstruct(
    path: str | os.PathLike[str],
    grid: ImageGrid,
    *,
    map_names: bool = True,
    on_invalid: OnInvalid = "raise",
) -> StructureSet:
    """Read an RT Structure Set as masks on a grid.

    A voxel is inside an ROI when its centre is inside the even-odd fill of all the ROI's
    CLOSED_PLANAR contours on its slice (several contours per slice, holes, islands and
    unsorted contours are handled). A contour is assigned to the slice nearest its z (so
    contours between CT slices land on the nearest one); a contour more than half a slice
    spacing beyond the grid's first or last slice is invalid. When contours from two
    different planes fall on the same slice, the plane nearest the slice centre is kept
    with an :class:`RtplanWarning` (silently with ``on_invalid="ignore"``). POINT contours
    mark their nearest voxel. ROIs without contours become empty structures.

    Parameters
    ----------
    path : path
        The RTSTRUCT file.
    grid : ImageGrid
        Grid of the output masks (usually the CT's, :attr:`CtSeries.grid`). When both the
        grid and the file carry a FrameOfReferenceUID they must match.
    map_names : bool
        Map ROI names to TG-263 with :func:`rtplan.structures.canonical_name` (names it
        does not know are kept).
    on_invalid : {"raise", "warn", "ignore"}
        What to do with invalid content (contours off the grid, non-planar or open
        contours, duplicate names after mapping, a different frame of reference): raise
        :class:`DicomInputError`, skip it with an :class:`RtplanWarning`, or skip it.

    Returns
    -------
    StructureSet
        One :class:`Structure` per ROI, role from RTROIInterpretedType (ORGAN -> organ,
        PTV -> ptv, ..., unknown types -> organ) and colour from ROIDisplayColor.

    Raises
    ------
    DicomInputError
        The file is not an RTSTRUCT, or invalid content with ``on_invalid="raise"``.
    """
    check_choice(on_invalid, ("raise", "warn", "ignore"), name="on_invalid")
    p = Path(path)
    try:
        ds = _dcmread(p)
    except (InvalidDicomError, OSError) as exc:
        raise DicomInputError(f"{p}: not a readable DICOM file ({exc})") from exc
    if str(ds.get("Modality", "")) != "RTSTRUCT" and str(ds.get("SOPClassUID", "")) != (
        RTSTRUCT_STORAGE
    ):
        raise DicomInputError(
            f"{p}: tag {_tag_name('Modality')} is {ds.get('Modality', None)!r}, expected RTSTRUCT"
        )
    rois = ds.get("StructureSetROISequence", None)
    if rois is None:
        raise DicomInputError(f"{p}: tag {_tag_name('StructureSetROISequence')} is missing")
    file_fors = {
        str(f.FrameOfReferenceUID)
        for f in ds.get("ReferencedFrameOfReferenceSequence", [])
        if "FrameOfReferenceUID" in f
    }
    contours_by_roi = {int(r.ReferencedROINumber): r for r in ds.get("ROIContourSequence", [])}
    types_by_roi = {
        int(o.ReferencedROINumber): str(o.get("RTROIInterpretedType", "") or "").upper()
        for o in ds.get("RTROIObservationsSequence", [])
    }
    nz, ny, nx = grid.shape
    out = StructureSet(grid=grid)
    for roi in rois:
        number = int(roi.ROINumber)
        raw_name = str(roi.get("ROIName", "") or f"ROI_{number}").strip() or f"ROI_{number}"
        name = (canonical_name(raw_name) or raw_name) if map_names else raw_name
        roi_for = str(roi.get("ReferencedFrameOfReferenceUID", "") or "") or (
            next(iter(file_fors)) if len(file_fors) == 1 else ""
        )
        if grid.frame_of_reference_uid and roi_for and roi_for != grid.frame_of_reference_uid:
            _handle_invalid(
                f"{p}: ROI {raw_name!r} refers to FrameOfReferenceUID {roi_for} but the grid has "
                f"{grid.frame_of_reference_uid}; skipped",
                on_invalid,
            )
            continue
        role = _INTERPRETED_TYPE_TO_ROLE.get(types_by_roi.get(number, ""), "organ")
        rc = contours_by_roi.get(number)
        color = None
        if rc is not None and rc.get("ROIDisplayColor", None) is not None:
            rgb = [int(c) for c in rc.ROIDisplayColor]
            if len(rgb) == 3 and all(0 <= c <= 255 for c in rgb):
                color = (rgb[0], rgb[1], rgb[2])
        mask = np.zeros(grid.shape, bool)
        planes: dict[int, dict[float, list[np.ndarray]]] = {}
        for c in rc.get("ContourSequence", []) if rc is not None else []:
            kind = str(c.get("ContourGeometricType", "CLOSED_PLANAR")).upper()
            try:
                data = _contour_data(c)
            except (DicomInputError, ValueError) as exc:
                raise DicomInputError(f"{p}: ROI {raw_name!r}: {exc}") from exc
            if data.size == 0:
                continue
            idx = grid.lps_to_index(data)
            if kind == "POINT":
                ijk = np.rint(idx).astype(int)
                ok = grid.contains_index(ijk)
                mask[tuple(ijk[ok].T)] = True
                continue
            if kind != "CLOSED_PLANAR":
                _handle_invalid(
                    f"{p}: ROI {raw_name!r} has a {kind} contour (tag "
                    f"{_tag_name('ContourGeometricType')}); only CLOSED_PLANAR and POINT are "
                    "read; skipped",
                    on_invalid,
                )
                continue
            kf = idx[:, 0]
            if np.ptp(kf) > _ON_SLICE_FRACTION:
                _handle_invalid(
                    f"{p}: ROI {raw_name!r} has a contour that is not in one axial plane; skipped",
                    on_invalid,
                )
                continue
            kmean = float(kf.mean())
            k = int(np.floor(kmean + 0.5))
            if k < 0 or k >= nz:
                _handle_invalid(
                    f"{p}: ROI {raw_name!r} has a contour at z = {float(data[0, 2]):.2f} mm, "
                    f"outside the grid's slices; skipped",
                    on_invalid,
                )
                continue
            plane_key = round(kmean, 2)
            planes.setdefault(k, {}).setdefault(plane_key, []).append(idx[:, 1:])
        for k, by_plane in planes.items():
            if len(by_plane) > 1:
                best = min(by_plane, key=lambda v: abs(v - k))
                _handle_invalid(
                    f"{p}: ROI {raw_name!r} has contours on {len(by_plane)} planes that all fall "
                    f"on slice {k}; kept the plane nearest the slice centre",
                    "warn" if on_invalid == "raise" else on_invalid,
                )
                polys = by_plane[best]
            else:
                polys = next(iter(by_plane.values()))
            mask[k] ^= _fill_polygons(polys, ny, nx)
        if name in out:
            _handle_invalid(
                f"{p}: ROI {raw_name!r} maps to the name {name!r} of another ROI; skipped "
                "(read with map_names=False to keep both)",
                on_invalid,
            )
            continue
        out.add(Structure(name, mask, grid, role=role, color=color))
    logger.info("read RTSTRUCT: %d ROIs", len(out))
    return out


# ====================================================================== RTDOSE
def write_rtdose(
    dose_gy: npt.ArrayLike,
    grid: ImageGrid,
    path: str | os.PathLike[str],
    *,
    ct_folder: str | os.PathLike[str] | CtSeries | None = None,
    description: str = "rtplan estimate",
    bits: Literal[16, 32] = 16,
    referenced_plan_uid: str | None = None,
    overwrite: bool = False,
    allow_input_folder: bool = False,
    uid_seed: str | None = None,
) -> Path:
    """Write an estimated 3-D dose as a DICOM RT Dose (multi-frame, DoseUnits GY).

    DoseType PHYSICAL, DoseSummationType PLAN, DoseGridScaling chosen so that the maximum
    dose uses the full unsigned range of ``bits``, GridFrameOffsetVector relative to the
    first frame, SeriesDescription ``description`` (e.g. ``"rtplan estimate: PBRT+WPRT"``)
    and DoseComment saying that the dose is an estimate, not a calculated plan.

    Parameters
    ----------
    dose_gy : array_like, shape ``grid.shape``
        Dose in Gy (>= 0, finite).
    grid : ImageGrid
        Dose grid (need not equal the CT grid, but must share its frame of reference);
        written with the identity direction.
    path : path
        Output file.
    ct_folder : path or CtSeries, optional
        The CT series the dose belongs to: its patient, study and FrameOfReferenceUID are
        used. Without it the dose gets the phantom patient of :func:`write_ct_series`, a new
        study and the grid's frame of reference (a new one when ``None``).
    description : str
        SeriesDescription (at most 64 characters).
    bits : {16, 32}
        BitsAllocated of the pixel data. 16 bits resolve 1/65535 of the maximum dose.
    referenced_plan_uid : str, optional
        SOPInstanceUID of the RT Plan the dose belongs to. DoseSummationType PLAN requires
        a ReferencedRTPlanSequence; rtplan writes no RT Plan object, so by default a new
        UID stands for the (unwritten) plan of the option.
    overwrite, allow_input_folder, uid_seed
        As in :func:`write_rtstruct`.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    ValueError
        A negative or non-finite dose, a shape mismatch, or a description that is too long.
    GridMismatchError
        The dose grid's FrameOfReferenceUID differs from the CT's.
    """
    arr = np.asarray(dose_gy, dtype=np.float64)
    if arr.shape != grid.shape:
        raise InvalidInputError(
            f"dose_gy has shape {arr.shape} but the grid has shape {grid.shape}"
        )
    if not np.all(np.isfinite(arr)) or (arr.size and arr.min() < 0):
        raise InvalidInputError("dose_gy must be finite and >= 0 Gy")
    if bits not in (16, 32):
        raise InvalidInputError(f"bits must be 16 or 32, got {bits!r}")
    _check_lo(description, "description")
    out = Path(path)
    ct: CtSeries | None
    if ct_folder is None or isinstance(ct_folder, CtSeries):
        ct = ct_folder
    else:
        ct = read_ct_series(ct_folder, pixels=False)
    _check_output(
        out,
        overwrite=overwrite,
        inputs=ct.files if ct else (),
        input_folder=(
            Path(ct_folder) if isinstance(ct_folder, (str, os.PathLike)) else ct and ct.folder
        ),
        allow_input_folder=allow_input_folder,
    )
    arr, g, _ = _to_identity(arr, grid)
    if ct is not None:
        ct_for = ct.grid.frame_of_reference_uid
        if g.frame_of_reference_uid and ct_for and g.frame_of_reference_uid != ct_for:
            raise GridMismatchError(
                f"the dose grid has FrameOfReferenceUID {g.frame_of_reference_uid} but the CT "
                f"series has {ct_for}"
            )
        for_uid = ct_for or g.frame_of_reference_uid or _new_uid(uid_seed, "for")
        patient, study_uid = ct.patient, ct.study_instance_uid
    else:
        for_uid = g.frame_of_reference_uid or _new_uid(uid_seed, "for")
        patient = PatientInfo(name="RTPLAN^PHANTOM", patient_id="RTPLAN-PHANTOM-0001", study_id="1")
        study_uid = _new_uid(uid_seed, "study")
    max_stored = 65535 if bits == 16 else 4294967295
    dmax = float(arr.max()) if arr.size else 0.0
    scaling = dmax / max_stored if dmax > 0 else 1.0
    scaling_str = f"{scaling:.9e}"
    if len(scaling_str) > _DS_MAX_CHARS:
        scaling_str = f"{scaling:.8e}"
    scaling = float(scaling_str)
    stored = np.clip(np.rint(arr / scaling), 0, max_stored)
    stored = stored.astype(np.uint16 if bits == 16 else np.uint32)
    sop_uid = _new_uid(uid_seed, "rtdose")
    date, time = _now()
    nz, ny, nx = g.shape
    sz, sy, sx = g.spacing_mm
    ds = Dataset()
    ds.file_meta = _file_meta(RTDOSE_STORAGE, sop_uid)
    ds.SpecificCharacterSet = "ISO_IR 100"
    ds.InstanceCreationDate, ds.InstanceCreationTime = date, time
    ds.SOPClassUID = RTDOSE_STORAGE
    ds.SOPInstanceUID = sop_uid
    ds.StudyDate, ds.StudyTime = patient.study_date, patient.study_time
    ds.ContentDate, ds.ContentTime = date, time
    ds.AccessionNumber = patient.accession_number
    ds.Modality = "RTDOSE"
    ds.Manufacturer = _MANUFACTURER
    ds.ReferringPhysicianName = patient.referring_physician_name
    ds.SeriesDescription = description
    ds.OperatorsName = ""
    ds.PatientName = patient.name
    ds.PatientID = patient.patient_id
    ds.PatientBirthDate = patient.birth_date
    ds.PatientSex = patient.sex
    ds.SliceThickness = ""
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = _new_uid(uid_seed, "rtdose-series")
    ds.StudyID = patient.study_id
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.ImagePositionPatient = [_ds_geom(v) for v in g.origin_mm]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = for_uid
    ds.PositionReferenceIndicator = ""
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.NumberOfFrames = nz
    ds.FrameIncrementPointer = pydicom.tag.Tag("GridFrameOffsetVector")
    ds.Rows, ds.Columns = ny, nx
    ds.PixelSpacing = [_ds_geom(sy), _ds_geom(sx)]
    ds.BitsAllocated = ds.BitsStored = bits
    ds.HighBit = bits - 1
    ds.PixelRepresentation = 0
    ds.DoseUnits = "GY"
    ds.DoseType = "PHYSICAL"
    ds.DoseComment = "ESTIMATE by rtplan for comparing options; not a plan dose"
    ds.ImageComments = (
        "Estimated dose from rtplan's fast analytic model, for comparing field options. "
        "It is NOT a dose calculated by a treatment planning system and must not be used "
        "for treatment."
    )
    ds.DoseSummationType = "PLAN"
    plan_ref = Dataset()
    plan_ref.ReferencedSOPClassUID = RTPLAN_STORAGE
    plan_ref.ReferencedSOPInstanceUID = referenced_plan_uid or _new_uid(uid_seed, "rtplan")
    ds.ReferencedRTPlanSequence = DicomSequence([plan_ref])
    ds.GridFrameOffsetVector = [_ds_geom(sz * k) for k in range(nz)]
    ds.DoseGridScaling = scaling_str
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    _atomic_write(ds, out)
    logger.info("wrote RTDOSE: %d frames, max %.3f Gy", nz, dmax)
    return out


def read_rtdose(path: str | os.PathLike[str]) -> tuple[np.ndarray, ImageGrid]:
    """Read an RT Dose file as ``(dose_gy, grid)``.

    Parameters
    ----------
    path : path
        RTDOSE file with DoseUnits GY and an axial ImageOrientationPatient.

    Returns
    -------
    dose_gy : ndarray of float64, shape ``grid.shape``
        Pixel values times DoseGridScaling, ``[slice, row, col]``, identity direction.
    grid : ImageGrid
        Geometry from ImagePositionPatient, ImageOrientationPatient, PixelSpacing and
        GridFrameOffsetVector (relative offsets when its first value is 0, else absolute
        z positions), with the FrameOfReferenceUID.

    Raises
    ------
    DicomInputError
        Not an RTDOSE, DoseUnits other than GY, a missing tag or an unsupported geometry.
    """
    p = Path(path)
    try:
        ds = _dcmread(p)
    except (InvalidDicomError, OSError) as exc:
        raise DicomInputError(f"{p}: not a readable DICOM file ({exc})") from exc
    if str(ds.get("Modality", "")) != "RTDOSE":
        raise DicomInputError(f"{p}: tag {_tag_name('Modality')} is not RTDOSE")
    units = str(_require(ds, "DoseUnits", p)).upper()
    if units != "GY":
        raise DicomInputError(f"{p}: tag {_tag_name('DoseUnits')} is {units!r}, expected GY")
    scaling = float(_require(ds, "DoseGridScaling", p))
    iop = np.asarray(_require(ds, "ImageOrientationPatient", p), float)
    ipp = np.asarray(_require(ds, "ImagePositionPatient", p), float)
    ps = np.asarray(_require(ds, "PixelSpacing", p), float)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    normal = np.cross(iop[:3], iop[3:])
    if frames > 1:
        offsets = np.asarray(_require(ds, "GridFrameOffsetVector", p), float).reshape(-1)
        if offsets.size != frames:
            raise DicomInputError(
                f"{p}: tag {_tag_name('GridFrameOffsetVector')} has {offsets.size} values for "
                f"{frames} frames"
            )
        if offsets[0] == 0:
            positions = ipp + offsets[:, None] * normal
        else:
            positions = np.tile(ipp, (frames, 1))
            positions[:, 2] = offsets
    else:
        positions = ipp[None, :]
    try:
        pixels = np.asarray(ds.pixel_array, dtype=np.float64)
    except Exception as exc:
        raise DicomInputError(f"{p}: cannot decode tag {_tag_name('PixelData')} ({exc})") from exc
    pixels = pixels.reshape(frames, int(ds.Rows), int(ds.Columns)) * scaling
    for_uid = str(ds.get("FrameOfReferenceUID", "") or "") or None
    if frames == 1:
        # one frame has no slice gap: use SliceThickness (1 mm when absent)
        thick = float(ds.get("SliceThickness", 0) or 0) or 1.0
        positions = np.vstack([positions, positions + thick * normal])
    order = np.argsort(positions @ normal, kind="stable")
    try:
        grid_file = ImageGrid.from_dicom_slices(
            positions[order],
            orientation=iop,
            pixel_spacing_mm=ps,
            rows=int(ds.Rows),
            columns=int(ds.Columns),
            frame_of_reference_uid=for_uid,
        )
    except GeometryError as exc:
        raise DicomInputError(f"{p}: tag {_tag_name('GridFrameOffsetVector')}: {exc}") from exc
    if frames == 1:
        grid_file = ImageGrid(
            (1, *grid_file.shape[1:]),
            grid_file.spacing_mm,
            grid_file.origin_mm,
            grid_file.direction,
            for_uid,
        )
    else:
        pixels = pixels[order]
    dose, grid, _ = _to_identity(pixels, grid_file)
    return np.ascontiguousarray(dose), grid
