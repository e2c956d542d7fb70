"""RT Dose out (an estimate, labelled as such) and in: :func:`write_rtdose`, :func:`read_rtdose`."""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from rtplan._typing import FloatArray
from rtplan.dicom_io._common import (
    _DS_MAX_CHARS,
    _MANUFACTURER,
    RTDOSE_STORAGE,
    RTPLAN_STORAGE,
    PatientInfo,
    _atomic_write,
    _check_lo,
    _check_output,
    _ds_geom,
    _file_meta,
    _new_uid,
    _now,
    _require,
    _tag_name,
)
from rtplan.dicom_io._files import _PIXEL_DATA_ERRORS, _read_file
from rtplan.dicom_io._series import _flip_to_identity, _identity_grid
from rtplan.dicom_io.ct import CtSeries, read_ct_series
from rtplan.errors import DicomInputError, GeometryError, GridMismatchError, InvalidInputError
from rtplan.grid import ImageGrid

__all__ = ["RtDoseHeader", "read_rtdose", "read_rtdose_with_header", "write_rtdose"]

logger = logging.getLogger(__name__)

#: The patient of a dose written without a CT (as :func:`~rtplan.dicom_io.write_ct_series`).
_PHANTOM = PatientInfo(name="RTPLAN^PHANTOM", patient_id="RTPLAN-PHANTOM-0001", study_id="1")

_DOSE_COMMENT = "ESTIMATE by rtplan for comparing options; not a plan dose"
_IMAGE_COMMENTS = (
    "Estimated dose from rtplan's fast analytic model, for comparing field options. "
    "It is NOT a dose calculated by a treatment planning system and must not be used "
    "for treatment."
)


@dataclass(frozen=True)
class _DoseOwner:
    """Whom a written dose belongs to: patient, study and frame of reference."""

    patient: PatientInfo
    study_uid: str
    for_uid: str


@dataclass(frozen=True)
class _StoredDose:
    """Dose as unsigned pixels: ``dose_gy = pixels * float(scaling_text)``."""

    pixels: npt.NDArray[np.uint16] | npt.NDArray[np.uint32]
    bits: int
    scaling_text: str  # DoseGridScaling, at most 16 characters
    max_gy: float


# ====================================================================== RTDOSE out
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
        used. Without it the dose gets the phantom patient of
        :func:`~rtplan.dicom_io.write_ct_series`, a new study and the grid's frame of
        reference (a new one when ``None``).
    description : str
        SeriesDescription (at most 64 characters).
    bits : {16, 32}
        BitsAllocated of the pixel data. 16 bits resolve 1/65535 of the maximum dose.
    referenced_plan_uid : str, optional
        SOPInstanceUID of the RT Plan the dose belongs to. DoseSummationType PLAN requires
        a ReferencedRTPlanSequence; rtplan writes no RT Plan object, so by default a new
        UID stands for the (unwritten) plan of the option.
    overwrite, allow_input_folder, uid_seed
        As in :func:`~rtplan.dicom_io.write_rtstruct`.

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
    arr = _checked_dose(dose_gy, grid, bits, description)
    out = Path(path)
    ct, input_folder = _dose_ct(ct_folder)
    _check_output(
        out,
        overwrite=overwrite,
        inputs=ct.files if ct else (),
        input_folder=input_folder,
        allow_input_folder=allow_input_folder,
    )
    g, flips = _identity_grid(grid)
    arr = _flip_to_identity(arr, flips)
    owner = _dose_owner(ct, g, uid_seed)
    stored = _stored_dose(arr, bits)
    ds = _rtdose_dataset(
        stored,
        g,
        owner,
        description=description,
        referenced_plan_uid=referenced_plan_uid,
        uid_seed=uid_seed,
    )
    _atomic_write(ds, out)
    logger.info("wrote RTDOSE: %d frames, max %.3f Gy", g.shape[0], stored.max_gy)
    return out


def _checked_dose(
    dose_gy: npt.ArrayLike, grid: ImageGrid, bits: int, description: str
) -> FloatArray:
    """``dose_gy`` as float64 after checking its shape, values, ``bits`` and ``description``."""
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
    return arr


def _dose_ct(
    ct_folder: str | os.PathLike[str] | CtSeries | None,
) -> tuple[CtSeries | None, Path | None]:
    """The CT series a dose belongs to (read without pixels) and its input folder."""
    if ct_folder is None:
        return None, None
    if isinstance(ct_folder, CtSeries):
        return ct_folder, ct_folder.folder
    return read_ct_series(ct_folder, pixels=False), Path(ct_folder)


def _dose_owner(ct: CtSeries | None, g: ImageGrid, uid_seed: str | None) -> _DoseOwner:
    """The CT's patient, study and frame of reference; else the phantom and new UIDs."""
    if ct is None:
        return _DoseOwner(
            patient=_PHANTOM,
            study_uid=_new_uid(uid_seed, "study"),
            for_uid=g.frame_of_reference_uid or _new_uid(uid_seed, "for"),
        )
    ct_for = ct.grid.frame_of_reference_uid
    if g.frame_of_reference_uid and ct_for and g.frame_of_reference_uid != ct_for:
        raise GridMismatchError(
            f"the dose grid has FrameOfReferenceUID {g.frame_of_reference_uid} but the CT "
            f"series has {ct_for}"
        )
    return _DoseOwner(
        patient=ct.patient,
        study_uid=ct.study_instance_uid,
        for_uid=ct_for or g.frame_of_reference_uid or _new_uid(uid_seed, "for"),
    )


def _stored_dose(dose_gy: FloatArray, bits: int) -> _StoredDose:
    """Unsigned ``bits`` pixels whose maximum is the maximum dose (full range).

    DoseGridScaling is written with 10 significant digits (9 when 10 do not fit a DS) and
    the pixels are rounded with the written value, so they read back exactly as scaled.
    """
    max_stored = 65535 if bits == 16 else 4294967295
    dmax = float(dose_gy.max()) if dose_gy.size else 0.0
    scaling = dmax / max_stored if dmax > 0 else 1.0
    scaling_str = f"{scaling:.9e}"
    if len(scaling_str) > _DS_MAX_CHARS:
        scaling_str = f"{scaling:.8e}"
    scaled = np.clip(np.rint(dose_gy / float(scaling_str)), 0, max_stored)
    pixels = scaled.astype(np.uint16) if bits == 16 else scaled.astype(np.uint32)
    return _StoredDose(pixels=pixels, bits=bits, scaling_text=scaling_str, max_gy=dmax)


def _rtdose_dataset(
    stored: _StoredDose,
    g: ImageGrid,
    owner: _DoseOwner,
    *,
    description: str,
    referenced_plan_uid: str | None,
    uid_seed: str | None,
) -> Dataset:
    """The RT Dose dataset: patient and study of ``owner``, image of ``stored`` on ``g``."""
    sop_uid = _new_uid(uid_seed, "rtdose")
    date, time = _now()
    patient = owner.patient
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
    ds.StudyInstanceUID = owner.study_uid
    ds.SeriesInstanceUID = _new_uid(uid_seed, "rtdose-series")
    ds.StudyID = patient.study_id
    ds.SeriesNumber = 1
    ds.InstanceNumber = 1
    ds.FrameOfReferenceUID = owner.for_uid
    ds.PositionReferenceIndicator = ""
    _set_dose_image(ds, stored, g)
    plan_ref = Dataset()
    plan_ref.ReferencedSOPClassUID = RTPLAN_STORAGE
    plan_ref.ReferencedSOPInstanceUID = referenced_plan_uid or _new_uid(uid_seed, "rtplan")
    ds.ReferencedRTPlanSequence = DicomSequence([plan_ref])
    return ds


def _set_dose_image(ds: Dataset, stored: _StoredDose, g: ImageGrid) -> None:
    """The multi-frame image attributes, dose attributes and pixels of ``ds``."""
    nz, ny, nx = g.shape
    sz, sy, sx = g.spacing_mm
    bits = stored.bits
    ds.ImagePositionPatient = [_ds_geom(v) for v in g.origin_mm]
    ds.ImageOrientationPatient = ["1", "0", "0", "0", "1", "0"]
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
    ds.DoseComment = _DOSE_COMMENT
    ds.ImageComments = _IMAGE_COMMENTS
    ds.DoseSummationType = "PLAN"
    ds.GridFrameOffsetVector = [_ds_geom(sz * k) for k in range(nz)]
    ds.DoseGridScaling = stored.scaling_text
    ds.PixelData = np.ascontiguousarray(stored.pixels).tobytes()


# ====================================================================== RTDOSE in
@dataclass(frozen=True)
class RtDoseHeader:
    """What an RT Dose file says about its dose (no patient identifiers).

    Attributes
    ----------
    dose_units : str
        DoseUnits, upper case (``"GY"``: :func:`read_rtdose` refuses any other).
    dose_type : str
        DoseType: ``"PHYSICAL"``, ``"EFFECTIVE"`` or ``"ERROR"`` (``""`` when absent).
    summation_type : str
        DoseSummationType: ``"PLAN"``, ``"MULTI_PLAN"``, ``"FRACTION"``, ``"BEAM"``...
        (``""`` when absent).
    frame_of_reference_uid : str or None
        FrameOfReferenceUID (also on the grid).
    description : str
        SeriesDescription (``""`` when absent).
    comment : str
        DoseComment (``""`` when absent).
    """

    dose_units: str
    dose_type: str
    summation_type: str
    frame_of_reference_uid: str | None
    description: str = ""
    comment: str = ""


def read_rtdose(path: str | os.PathLike[str]) -> tuple[FloatArray, ImageGrid]:
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
        Not an RTDOSE, DoseUnits other than GY (e.g. RELATIVE), a missing tag, an
        oblique or rotated ImageOrientationPatient or uneven frame offsets.
    """
    dose_gy, grid, _ = read_rtdose_with_header(path)
    return dose_gy, grid


def read_rtdose_with_header(
    path: str | os.PathLike[str],
) -> tuple[FloatArray, ImageGrid, RtDoseHeader]:
    """Read an RT Dose file as ``(dose_gy, grid, header)``: :func:`read_rtdose` plus its header.

    Parameters
    ----------
    path : path
        RTDOSE file with DoseUnits GY and an axial ImageOrientationPatient.

    Returns
    -------
    dose_gy : ndarray of float64, shape ``grid.shape``
        As :func:`read_rtdose`.
    grid : ImageGrid
        As :func:`read_rtdose`.
    header : RtDoseHeader
        DoseUnits, DoseType, DoseSummationType, FrameOfReferenceUID, SeriesDescription
        and DoseComment.

    Raises
    ------
    DicomInputError
        As :func:`read_rtdose`.
    """
    p = Path(path)
    ds = _read_file(p, "an RTDOSE file")
    if str(ds.get("Modality", "")) != "RTDOSE":
        raise DicomInputError(f"{p}: tag {_tag_name('Modality')} is not RTDOSE")
    header = _dose_header(ds, p)
    scaling = float(_require(ds, "DoseGridScaling", p))
    iop = np.asarray(_require(ds, "ImageOrientationPatient", p), float)
    _check_axial(iop, p)
    ipp = np.asarray(_require(ds, "ImagePositionPatient", p), float)
    ps = np.asarray(_require(ds, "PixelSpacing", p), float)
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    normal = np.cross(iop[:3], iop[3:])
    positions = _frame_positions(ds, p, ipp, normal, frames)
    try:
        pixels = np.asarray(ds.pixel_array, dtype=np.float64)
    except _PIXEL_DATA_ERRORS as exc:
        raise DicomInputError(f"{p}: cannot decode tag {_tag_name('PixelData')} ({exc})") from exc
    pixels = pixels.reshape(frames, int(ds.Rows), int(ds.Columns)) * scaling
    for_uid = header.frame_of_reference_uid
    if frames == 1:
        # one frame has no slice gap: use SliceThickness (1 mm when absent)
        thick = float(ds.get("SliceThickness", 0) or 0) or 1.0
        positions = np.vstack([positions, positions + thick * normal])
    order = np.argsort(positions @ normal, kind="stable")
    try:
        grid_file = ImageGrid.from_dicom_slices(
            positions[order].tolist(),
            orientation=iop.tolist(),
            pixel_spacing_mm=ps.tolist(),
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
    grid, flips = _identity_grid(grid_file)
    return np.ascontiguousarray(_flip_to_identity(pixels, flips)), grid, header


def _text(ds: Dataset, keyword: str) -> str:
    """The value of an optional text tag, stripped (``""`` when absent or empty)."""
    return str(ds.get(keyword, "") or "").strip()


def _dose_header(ds: Dataset, p: Path) -> RtDoseHeader:
    """The header of an RT Dose dataset; DoseUnits other than GY refused."""
    units = str(_require(ds, "DoseUnits", p)).strip().upper()
    if units == "RELATIVE":
        raise DicomInputError(
            f"{p}: tag {_tag_name('DoseUnits')} is RELATIVE (a dose relative to a "
            "normalisation the file does not state), expected GY: export the dose in Gy "
            "(absolute dose) from the planning system"
        )
    if units != "GY":
        raise DicomInputError(f"{p}: tag {_tag_name('DoseUnits')} is {units!r}, expected GY")
    return RtDoseHeader(
        dose_units=units,
        dose_type=_text(ds, "DoseType").upper(),
        summation_type=_text(ds, "DoseSummationType").upper(),
        frame_of_reference_uid=_text(ds, "FrameOfReferenceUID") or None,
        description=_text(ds, "SeriesDescription"),
        comment=_text(ds, "DoseComment"),
    )


def _check_axial(iop: FloatArray, p: Path) -> None:
    """Refuse an ImageOrientationPatient that is not axial (rows along x, columns along y).

    Flipped axes (a ``-1``) are fine: :func:`read_rtdose_with_header` flips them back.
    """
    if iop.shape != (6,) or not np.allclose(np.abs(iop), (1, 0, 0, 0, 1, 0), atol=1e-4):
        raise DicomInputError(
            f"{p}: tag {_tag_name('ImageOrientationPatient')} is {np.round(iop, 4).tolist()}; "
            "only axial dose grids are read (rows along x, columns along y, axes possibly "
            "flipped): export the dose on an axial grid, or resample it to one first"
        )


def _frame_positions(
    ds: Dataset, p: Path, ipp: FloatArray, normal: FloatArray, frames: int
) -> FloatArray:
    """ImagePositionPatient of every frame, from GridFrameOffsetVector.

    Offsets relative to the first frame along the normal when the vector starts at 0,
    else absolute z positions.
    """
    if frames == 1:
        return ipp[None, :]
    offsets = np.asarray(_require(ds, "GridFrameOffsetVector", p), float).reshape(-1)
    if offsets.size != frames:
        raise DicomInputError(
            f"{p}: tag {_tag_name('GridFrameOffsetVector')} has {offsets.size} values for "
            f"{frames} frames"
        )
    if offsets[0] == 0:
        return ipp + offsets[:, None] * normal
    positions = np.tile(ipp, (frames, 1))
    positions[:, 2] = offsets
    return positions
