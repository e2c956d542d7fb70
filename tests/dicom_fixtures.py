"""DICOM fixtures built with pydicom for tests/test_dicom_io.py (no patient data).

These deliberately do *not* use rtplan's writers, so the readers are tested against files
shaped the way other systems write them: shuffled file names, reversed InstanceNumbers,
flipped orientations, per-slice rescale, unsorted contours, holes, contours between slices.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

CT_CLASS = "1.2.840.10008.5.1.4.1.1.2"
PET_CLASS = "1.2.840.10008.5.1.4.1.1.128"
RTSTRUCT_CLASS = "1.2.840.10008.5.1.4.1.1.481.3"

SECRET_NAME = "SECRET^PATIENTNAME"
SECRET_ID = "SECRETID-12345"


def _meta(sop_class: str, sop_uid: str) -> FileMetaDataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = sop_uid
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    return meta


def _fmt(v: float) -> str:
    return f"{v:.6g}"


def image_slice(
    *,
    sop_class: str,
    modality: str,
    position: Sequence[float],
    pixels: np.ndarray,
    series_uid: str,
    study_uid: str,
    for_uid: str,
    iop: Sequence[float] = (1, 0, 0, 0, 1, 0),
    pixel_spacing: Sequence[float] = (1.0, 1.0),
    instance_number: int = 1,
    slope: float = 1.0,
    intercept: float = 0.0,
    extra: dict | None = None,
) -> Dataset:
    """One single-frame image slice (CT or PT) with int16 pixels already rescaled."""
    sop_uid = generate_uid()
    ds = Dataset()
    ds.file_meta = _meta(sop_class, sop_uid)
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_uid
    ds.Modality = modality
    ds.PatientName = SECRET_NAME
    ds.PatientID = SECRET_ID
    ds.PatientBirthDate = "19500101"
    ds.PatientSex = "M"
    ds.StudyInstanceUID = study_uid
    ds.SeriesInstanceUID = series_uid
    ds.StudyDate, ds.StudyTime = "20240102", "100000"
    ds.StudyID = "S1"
    ds.SeriesNumber = 3
    ds.InstanceNumber = instance_number
    ds.FrameOfReferenceUID = for_uid
    ds.ImagePositionPatient = [_fmt(v) for v in position]
    ds.ImageOrientationPatient = [_fmt(v) for v in iop]
    ds.PixelSpacing = [_fmt(v) for v in pixel_spacing]
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = pixels.shape
    ds.BitsAllocated, ds.BitsStored, ds.HighBit = 16, 16, 15
    ds.PixelRepresentation = 1
    ds.RescaleSlope = _fmt(slope)
    ds.RescaleIntercept = _fmt(intercept)
    stored = np.rint((np.asarray(pixels, float) - intercept) / slope).astype(np.int16)
    ds.PixelData = stored.tobytes()
    for key, value in (extra or {}).items():
        setattr(ds, key, value)
    return ds


def write_ct(
    folder: Path,
    *,
    n_slices: int = 6,
    rows: int = 8,
    cols: int = 10,
    z_positions: Sequence[float] | None = None,
    iop: Sequence[float] = (1, 0, 0, 0, 1, 0),
    origin_xy: Sequence[float] = (-10.0, -20.0),
    pixel_spacing: Sequence[float] = (1.0, 1.5),
    hu: Callable[[int, float], np.ndarray] | None = None,
    series_uid: str | None = None,
    for_uid: str | None = None,
    per_slice_extra: dict[int, dict] | None = None,
    names: Callable[[int], str] | None = None,
) -> dict:
    """Write a CT series file by file; file names and InstanceNumbers run against z.

    ``hu(k, z)`` gives the HU image of slice ``k`` (default: the constant ``z * 10``), so
    tests can recover the slice order from the pixel values.
    """
    folder.mkdir(parents=True, exist_ok=True)
    series_uid = series_uid or generate_uid()
    study_uid = generate_uid()
    for_uid = for_uid or generate_uid()
    zs = list(z_positions) if z_positions is not None else [5.0 + 2.5 * k for k in range(n_slices)]
    files, sops = [], []
    for k, z in enumerate(zs):
        img = hu(k, z) if hu is not None else np.full((rows, cols), z * 10.0)
        ds = image_slice(
            sop_class=CT_CLASS,
            modality="CT",
            position=(origin_xy[0], origin_xy[1], z),
            pixels=img,
            series_uid=series_uid,
            study_uid=study_uid,
            for_uid=for_uid,
            iop=iop,
            pixel_spacing=pixel_spacing,
            instance_number=len(zs) - k,
            intercept=-1024.0,
            extra=(per_slice_extra or {}).get(k),
        )
        name = names(k) if names else f"img_{(7 * k + 3) % 101:03d}.dcm"
        path = folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        pydicom.dcmwrite(path, ds, enforce_file_format=True)
        files.append(path)
        sops.append(str(ds.SOPInstanceUID))
    return {"series_uid": series_uid, "for_uid": for_uid, "files": files, "sops": sops, "z": zs}


def write_pet(
    folder: Path,
    *,
    activity_bqml: np.ndarray,
    z0: float = 0.0,
    slice_mm: float = 4.0,
    origin_xy: Sequence[float] = (-8.0, -8.0),
    pixel_spacing: Sequence[float] = (4.0, 4.0),
    for_uid: str | None = None,
    units: str = "BQML",
    decay: str = "START",
    weight_kg: float | None = 80.0,
    dose_bq: float | None = 200e6,
    half_life_s: float | None = 4062.6,
    injection_time: str | None = "090000",
    series_time: str = "100000",
    acquisition_times: Sequence[str] | None = None,
    philips: dict[int, float] | None = None,
) -> dict:
    """Write a PET series (Units BQML) with per-slice rescale slopes.

    ``philips`` maps element offsets of the private group "Philips PET Private Group"
    (0x00: SUV Scale Factor (7053,1000), 0x09: Activity Concentration Scale Factor) to the
    values written in every slice. Returns the activity as stored (after int16
    quantisation) under ``"activity"``.
    """
    folder.mkdir(parents=True, exist_ok=True)
    series_uid, study_uid = generate_uid(), generate_uid()
    for_uid = for_uid or generate_uid()
    stored = np.zeros(activity_bqml.shape)
    for k in range(activity_bqml.shape[0]):
        img = activity_bqml[k]
        slope = float(_fmt(max(float(np.abs(img).max()) / 30000.0, 1e-3)))
        stored[k] = np.rint(img / slope) * slope
        extra = {
            "Units": units,
            "DecayCorrection": decay,
            "CorrectedImage": ["ATTN", "DECY"],
            "SeriesDate": "20240102",
            "SeriesTime": series_time,
            "AcquisitionDate": "20240102",
            "AcquisitionTime": acquisition_times[k] if acquisition_times else series_time,
        }
        if weight_kg is not None:
            extra["PatientWeight"] = _fmt(weight_kg)
        info = Dataset()
        if dose_bq is not None:
            info.RadionuclideTotalDose = _fmt(dose_bq)
        if half_life_s is not None:
            info.RadionuclideHalfLife = _fmt(half_life_s)
        if injection_time is not None:
            info.RadiopharmaceuticalStartTime = injection_time
        extra["RadiopharmaceuticalInformationSequence"] = DicomSequence([info])
        ds = image_slice(
            sop_class=PET_CLASS,
            modality="PT",
            position=(origin_xy[0], origin_xy[1], z0 + slice_mm * k),
            pixels=img,
            series_uid=series_uid,
            study_uid=study_uid,
            for_uid=for_uid,
            pixel_spacing=pixel_spacing,
            instance_number=k + 1,
            slope=slope,
            extra=extra,
        )
        if philips:
            block = ds.private_block(0x7053, "Philips PET Private Group", create=True)
            for element, value in philips.items():
                block.add_new(element, "DS", _fmt(value))
        pydicom.dcmwrite(folder / f"pet{k:03d}.dcm", ds, enforce_file_format=True)
    return {"for_uid": for_uid, "series_uid": series_uid, "activity": stored}


def write_rtstruct_fixture(
    path: Path,
    rois: Sequence[dict],
    *,
    for_uid: str,
) -> Path:
    """An RTSTRUCT as another system might write it.

    Each ROI dict has ``name``, ``number``, optional ``type`` (RTROIInterpretedType),
    ``color`` and ``contours``: a list of ``(z_mm, [(x, y), ...])`` or
    ``(z_mm, [(x, y), ...], "POINT")``, written in the order given (so tests can pass
    them unsorted). No ContourImageSequence is written (it is optional).
    """
    sop_uid = generate_uid()
    ds = Dataset()
    ds.file_meta = _meta(RTSTRUCT_CLASS, sop_uid)
    ds.SOPClassUID = RTSTRUCT_CLASS
    ds.SOPInstanceUID = sop_uid
    ds.Modality = "RTSTRUCT"
    ds.PatientName = SECRET_NAME
    ds.PatientID = SECRET_ID
    ds.StudyInstanceUID = generate_uid()
    ds.SeriesInstanceUID = generate_uid()
    ds.StructureSetLabel = "other TPS"
    ref = Dataset()
    ref.FrameOfReferenceUID = for_uid
    ds.ReferencedFrameOfReferenceSequence = DicomSequence([ref])
    ssrois, contours, observations = [], [], []
    for roi in rois:
        s = Dataset()
        s.ROINumber = roi["number"]
        s.ReferencedFrameOfReferenceUID = roi.get("for_uid", for_uid)
        s.ROIName = roi["name"]
        s.ROIGenerationAlgorithm = "MANUAL"
        ssrois.append(s)
        rc = Dataset()
        rc.ReferencedROINumber = roi["number"]
        rc.ROIDisplayColor = list(roi.get("color", (10, 20, 30)))
        seq = []
        for entry in roi.get("contours", []):
            z, pts = entry[0], entry[1]
            kind = entry[2] if len(entry) > 2 else "CLOSED_PLANAR"
            c = Dataset()
            c.ContourGeometricType = kind
            c.NumberOfContourPoints = len(pts)
            c.ContourData = [_fmt(v) for x, y in pts for v in (x, y, z)]
            seq.append(c)
        if seq:
            rc.ContourSequence = DicomSequence(seq)
        contours.append(rc)
        o = Dataset()
        o.ObservationNumber = roi["number"]
        o.ReferencedROINumber = roi["number"]
        o.RTROIInterpretedType = roi.get("type", "ORGAN")
        o.ROIInterpreter = ""
        observations.append(o)
    ds.StructureSetROISequence = DicomSequence(ssrois)
    ds.ROIContourSequence = DicomSequence(contours)
    ds.RTROIObservationsSequence = DicomSequence(observations)
    pydicom.dcmwrite(path, ds, enforce_file_format=True)
    return path
