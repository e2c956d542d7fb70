"""CT image series in and out: :func:`read_ct_series` and :func:`write_ct_series`."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset

from rtplan._io import atomic_path
from rtplan._typing import FloatArray
from rtplan.dicom_io._common import (
    _MANUFACTURER,
    CT_IMAGE_STORAGE,
    PatientInfo,
    _check_lo,
    _ds_geom,
    _file_meta,
    _new_uid,
    _now,
    _patient_info,
    _require,
)
from rtplan.dicom_io._files import _find_dicom_files, _pixels, _select_series
from rtplan.dicom_io._series import _flip_to_identity, _identity_grid, _sorted_series
from rtplan.errors import InvalidInputError, OutputExistsError
from rtplan.grid import ImageGrid

__all__ = ["MAX_ABS_HU", "CtSeries", "read_ct_series", "write_ct_series"]

logger = logging.getLogger(__name__)

#: The largest magnitude (HU) a CT value may have (tool default): a 16-bit stored value
#: with RescaleSlope 1 and RescaleIntercept -1024 spans -33792 to 64511 HU; values far
#: beyond that come from wrong rescale tags.
MAX_ABS_HU = 1e6


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

    hu: npt.NDArray[np.float32] = field(repr=False)
    grid: ImageGrid
    series_instance_uid: str
    study_instance_uid: str
    sop_instance_uids: tuple[str, ...] = field(repr=False)
    files: tuple[Path, ...] = field(repr=False)
    slice_positions_mm: FloatArray = field(repr=False)
    sop_class_uid: str = CT_IMAGE_STORAGE
    series_description: str = ""
    flipped_axes: tuple[bool, bool, bool] = (False, False, False)
    patient: PatientInfo = field(default_factory=PatientInfo, repr=False)

    @property
    def folder(self) -> Path:
        """The deepest folder holding every file of the series."""
        return Path(os.path.commonpath([str(f.parent) for f in self.files]))


# ====================================================================== CT in
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
        is flipped here; see the package docstring), and its :class:`ImageGrid` carrying the
        FrameOfReferenceUID.

    Raises
    ------
    DicomInputError
        No CT series, several CT series and no ``series_uid``, a missing tag, gantry tilt
        (GantryDetectorTilt), oblique orientation (ImageOrientationPatient), missing,
        duplicate or unevenly spaced slices (ImagePositionPatient), mixed Rows, Columns,
        PixelSpacing or FrameOfReferenceUID, a tag that is not a finite number, a
        RescaleSlope that is not > 0, or HU beyond +-:data:`MAX_ABS_HU` (wrong rescale
        tags); the message names the file and the tag.
    """
    found = _find_dicom_files(folder)
    items = _select_series(
        found, folder, modality="CT", sop_classes=(CT_IMAGE_STORAGE,), series_uid=series_uid
    )
    series = _sorted_series(items, folder)
    grid, flips = _identity_grid(series.grid_file)
    if pixels:
        slices = [_pixels(p, max_abs=MAX_ABS_HU) for p, _ in series.items]
        hu_file = np.stack(slices).astype(np.float32)
        hu = np.ascontiguousarray(_flip_to_identity(hu_file, flips))
    else:
        hu = np.zeros((0, 0, 0), np.float32)
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
        patient=_patient_info(first, series.items[0][0]),
    )


# ====================================================================== CT out
@dataclass(frozen=True)
class _CtHeader:
    """What every slice of a written CT series shares."""

    grid: ImageGrid  # identity direction
    patient_name: str
    patient_id: str
    series_description: str
    study_uid: str
    series_uid: str
    for_uid: str
    date: str
    time: str
    slope: float
    intercept: float


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
    g, flips = _identity_grid(grid)
    arr = _flip_to_identity(arr, flips)
    dest = Path(folder)
    if dest.exists() and (not dest.is_dir() or any(dest.iterdir())):
        raise OutputExistsError(f"{dest} exists and is not an empty folder")
    stored, slope, intercept = _hu_storage(arr)
    date, time = _now()
    header = _CtHeader(
        grid=g,
        patient_name=patient_name,
        patient_id=patient_id,
        series_description=series_description,
        study_uid=study_instance_uid or _new_uid(uid_seed, "study"),
        series_uid=_new_uid(uid_seed, "ct-series"),
        for_uid=g.frame_of_reference_uid or _new_uid(uid_seed, "for"),
        date=date,
        time=time,
        slope=slope,
        intercept=intercept,
    )
    dest.parent.mkdir(parents=True, exist_ok=True)
    # os.replace renames onto an existing empty folder (checked above) on POSIX
    with atomic_path(dest) as tmpdir:
        tmpdir.mkdir()  # honours the umask, unlike mkdtemp
        for k in range(g.shape[0]):
            ds = _ct_slice(header, k, stored[k], _new_uid(uid_seed, "ct", k))
            pydicom.dcmwrite(tmpdir / f"CT_{k + 1:04d}.dcm", ds, enforce_file_format=True)
    logger.info("wrote CT series: %d slices", g.shape[0])
    return dest


def _hu_storage(hu: FloatArray) -> tuple[npt.NDArray[np.int16], float, float]:
    """``(stored, slope, intercept)``: int16 pixels with ``hu = stored * slope + intercept``.

    Slope 1 and intercept 0 (HU rounded to 1) when the values fit in int16, else a slope
    that spreads the range over 65000 steps.
    """
    lo, hi = float(hu.min()), float(hu.max())
    slope, intercept = 1.0, 0.0
    if lo < -32768 or hi > 32767:
        slope = max((hi - lo) / 65000.0, 1.0)
        intercept = float(np.floor(lo))
    stored = np.clip(np.rint((hu - intercept) / slope), -32768, 32767).astype(np.int16)
    return stored, slope, intercept


def _ct_slice(header: _CtHeader, k: int, stored: npt.NDArray[np.int16], sop_uid: str) -> Dataset:
    """The CT Image dataset of slice ``k``."""
    g = header.grid
    _nz, ny, nx = g.shape
    sz, sy, sx = g.spacing_mm
    date, time = header.date, header.time
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
    ds.SeriesDescription = header.series_description
    ds.DerivationDescription = "synthetic image written by rtplan"
    ds.PatientName = header.patient_name
    ds.PatientID = header.patient_id
    ds.PatientBirthDate = ""
    ds.PatientSex = "O"
    ds.BodyPartExamined = "PELVIS"
    ds.KVP = ""
    ds.SliceThickness = _ds_geom(sz)
    ds.PatientPosition = "HFS"
    ds.StudyInstanceUID = header.study_uid
    ds.SeriesInstanceUID = header.series_uid
    ds.StudyID = "1"
    ds.SeriesNumber = 1
    ds.AcquisitionNumber = 1
    ds.InstanceNumber = k + 1
    pos = g.index_to_lps([k, 0, 0])
    ds.ImagePositionPatient = [_ds_geom(v) for v in pos]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
    ds.FrameOfReferenceUID = header.for_uid
    ds.PositionReferenceIndicator = ""
    ds.SliceLocation = _ds_geom(pos[2])
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = ny, nx
    ds.PixelSpacing = [_ds_geom(sy), _ds_geom(sx)]
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1
    ds.RescaleIntercept = _ds_geom(header.intercept)
    ds.RescaleSlope = _ds_geom(header.slope)
    ds.RescaleType = "HU"
    ds.PixelData = np.ascontiguousarray(stored).tobytes()
    return ds
