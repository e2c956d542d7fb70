"""PET series in, as body-weight SUV: :func:`read_pet_suv`."""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset

from rtplan._typing import FloatArray
from rtplan.dicom_io._common import PET_IMAGE_STORAGE, _require, _tag_name
from rtplan.dicom_io._files import _find_dicom_files, _pixels, _select_series
from rtplan.dicom_io._series import _flip_to_identity, _identity_grid, _sorted_series
from rtplan.errors import DicomInputError, GridMismatchError, InvalidInputError
from rtplan.grid import ImageGrid, resample_to_grid

__all__ = ["read_pet_header", "read_pet_suv"]

logger = logging.getLogger(__name__)

_DECAY_CORRECTIONS = ("START", "ADMIN", "NONE")


@dataclass(frozen=True)
class _SuvInputs:
    """Values given by the caller in place of the PET files' tags (None: read the tag)."""

    patient_weight_kg: float | None = None
    injected_dose_bq: float | None = None
    injection_datetime: _dt.datetime | None = None
    half_life_s: float | None = None
    scan_datetime: _dt.datetime | None = None


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
) -> tuple[FloatArray, ImageGrid]:
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
        :func:`~rtplan.dicom_io.read_ct_series`.
    GridMismatchError
        PET and CT frames of reference differ.
    """
    given = _SuvInputs(
        patient_weight_kg=patient_weight_kg,
        injected_dose_bq=injected_dose_bq,
        injection_datetime=injection_datetime,
        half_life_s=half_life_s,
        scan_datetime=scan_datetime,
    )
    found = _find_dicom_files(folder)
    items = _select_series(
        found, folder, modality="PT", sop_classes=(PET_IMAGE_STORAGE,), series_uid=series_uid
    )
    series = _sorted_series(items, folder)
    suv_file = _suv_in_file_order(series.items, given)
    pet_grid, flips = _identity_grid(series.grid_file)
    suv = np.ascontiguousarray(_flip_to_identity(suv_file, flips), dtype=np.float64)
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


def read_pet_header(
    folder: str | os.PathLike[str], *, series_uid: str | None = None
) -> Dataset:
    """The header of the first slice of the PET series in ``folder`` (no pixel data).

    For what the series records of itself, e.g. its radiopharmaceutical
    (:func:`rtplan.tracers.resolve_tracer`).

    Parameters
    ----------
    folder : path
        Folder searched recursively for the PET series (Modality PT).
    series_uid : str, optional
        SeriesInstanceUID to pick when the folder holds several PET series.

    Returns
    -------
    pydicom.Dataset

    Raises
    ------
    DicomInputError
        No PET series in ``folder``, or several and no ``series_uid``.
    """
    found = _find_dicom_files(folder)
    items = _select_series(
        found, folder, modality="PT", sop_classes=(PET_IMAGE_STORAGE,), series_uid=series_uid
    )
    return _sorted_series(items, folder).items[0][1]


def _suv_in_file_order(items: list[tuple[Path, Dataset]], given: _SuvInputs) -> FloatArray:
    """SUVbw of the sorted slices ``items``, ``[slice, row, col]`` in file orientation."""
    path0, ds0 = items[0]
    units = str(_require(ds0, "Units", path0)).strip().upper()
    activity = np.stack([_pixels(p) for p, _ in items])
    if units == "GML":
        return activity
    if units != "BQML":
        raise DicomInputError(
            f"{path0}: tag {_tag_name('Units')} is {units!r}; SUV needs BQML (Bq/mL) images"
        )
    corrected = [str(c).upper() for c in (ds0.get("CorrectedImage", None) or [])]
    if corrected and "ATTN" not in corrected:
        raise DicomInputError(
            f"{path0}: tag {_tag_name('CorrectedImage')} {corrected} lacks ATTN; SUV needs "
            "attenuation-corrected images"
        )
    return activity * _suv_factors(items, given)[:, None, None]


def _suv_factors(items: list[tuple[Path, Dataset]], given: _SuvInputs) -> FloatArray:
    """SUVbw factor ``W / D(t)`` (g/Bq) of every slice (sorted order)."""
    path0, ds0 = items[0]
    seq = ds0.get("RadiopharmaceuticalInformationSequence", None)
    info = seq[0] if seq else Dataset()
    weight_kg = _patient_weight_kg(ds0, path0, given.patient_weight_kg)
    dose_bq = _injected_dose_bq(info, path0, given.injected_dose_bq)
    decay = _decay_correction(ds0, path0)
    base = dose_bq / (weight_kg * 1000.0)  # Bq per g
    if decay == "ADMIN":
        return np.full(len(items), 1.0 / base)
    half_life_s = _half_life_s(info, path0, given.half_life_s)
    series_dt = _datetime_of(ds0, "Series")
    injection = given.injection_datetime
    if injection is None:
        injection = _injection_datetime(info, series_dt, path0)
    if decay == "START":
        scan = given.scan_datetime
        if scan is None:
            scan = _scan_start(items, series_dt)
        times = [scan] * len(items)
    else:  # NONE: each slice at its own acquisition time
        times = _slice_times(items, given.scan_datetime)
    return _decay_factors(times, injection, base, half_life_s, path0)


def _patient_weight_kg(ds0: Dataset, path0: Path, given: float | None) -> float:
    """``given``, else PatientWeight (kg); an error when missing or not positive."""
    if given is None:
        w = ds0.get("PatientWeight", None)
        if w is None or str(w).strip() == "" or float(w) <= 0:
            raise DicomInputError(
                f"{path0}: tag {_tag_name('PatientWeight')} is missing or zero; pass "
                "patient_weight_kg="
            )
        given = float(w)
    if given <= 0:
        raise InvalidInputError(f"patient_weight_kg must be > 0, got {given}")
    return given


def _injected_dose_bq(info: Dataset, path0: Path, given: float | None) -> float:
    """``given``, else RadionuclideTotalDose (Bq) of the radiopharmaceutical item."""
    if given is not None:
        return given
    d = info.get("RadionuclideTotalDose", None)
    if d is None or str(d).strip() == "" or float(d) <= 0:
        raise DicomInputError(
            f"{path0}: tag {_tag_name('RadionuclideTotalDose')} in "
            f"{_tag_name('RadiopharmaceuticalInformationSequence')} is missing or zero; pass "
            "injected_dose_bq="
        )
    return float(d)


def _half_life_s(info: Dataset, path0: Path, given: float | None) -> float:
    """``given``, else RadionuclideHalfLife (s) of the radiopharmaceutical item."""
    if given is not None:
        return given
    h = info.get("RadionuclideHalfLife", None)
    if h is None or str(h).strip() == "" or float(h) <= 0:
        raise DicomInputError(
            f"{path0}: tag {_tag_name('RadionuclideHalfLife')} in "
            f"{_tag_name('RadiopharmaceuticalInformationSequence')} is missing; pass "
            "half_life_s="
        )
    return float(h)


def _decay_correction(ds0: Dataset, path0: Path) -> str:
    """DecayCorrection: START, ADMIN or NONE."""
    decay = str(ds0.get("DecayCorrection", "") or "").strip().upper()
    if not decay:
        raise DicomInputError(f"{path0}: tag {_tag_name('DecayCorrection')} is missing")
    if decay not in _DECAY_CORRECTIONS:
        raise DicomInputError(
            f"{path0}: tag {_tag_name('DecayCorrection')} is {decay!r}; expected START, ADMIN "
            "or NONE"
        )
    return decay


def _scan_start(items: list[tuple[Path, Dataset]], series_dt: _dt.datetime | None) -> _dt.datetime:
    """The scan start: SeriesDate/Time unless the earliest acquisition is earlier."""
    acq = [t for t in (_datetime_of(ds, "Acquisition") for _, ds in items) if t]
    candidates = []
    if series_dt is not None:
        candidates.append(series_dt)
    if acq and (series_dt is None or series_dt > min(acq)):
        candidates = [min(acq)]
    if not candidates:
        raise DicomInputError(
            f"{items[0][0]}: tags {_tag_name('SeriesTime')} and {_tag_name('AcquisitionTime')} "
            "are missing; pass scan_datetime="
        )
    return candidates[0]


def _slice_times(
    items: list[tuple[Path, Dataset]], scan_datetime: _dt.datetime | None
) -> list[_dt.datetime]:
    """Each slice's acquisition time (``scan_datetime`` where a slice has none)."""
    times = []
    for path, ds in items:
        t = _datetime_of(ds, "Acquisition") or scan_datetime
        if t is None:
            raise DicomInputError(
                f"{path}: tag {_tag_name('AcquisitionTime')} is missing (DecayCorrection "
                "NONE needs each slice's time); pass scan_datetime="
            )
        times.append(t)
    return times


def _decay_factors(
    times: list[_dt.datetime],
    injection: _dt.datetime,
    base_bq_per_g: float,
    half_life_s: float,
    path0: Path,
) -> FloatArray:
    """``1 / (D(t) / W)`` at each time: the injected activity per gram decayed to ``t``."""
    factors = []
    for t in times:
        elapsed = (t - injection).total_seconds()
        if elapsed < 0:
            raise DicomInputError(
                f"{path0}: the radiopharmaceutical start is {-elapsed:.0f} s after the scan "
                f"reference time; check {_tag_name('RadiopharmaceuticalStartTime')}"
            )
        factors.append(1.0 / (base_bq_per_g * math.exp(-math.log(2.0) * elapsed / half_life_s)))
    return np.asarray(factors)


# ====================================================================== dates and times
def _parse_da_tm(date: str, time: str) -> _dt.datetime:
    """A naive datetime from DICOM DA and TM text."""
    d = pydicom.valuerep.DA(str(date).strip())
    t = pydicom.valuerep.TM(str(time).strip())
    return _dt.datetime.combine(d, t).replace(tzinfo=None)


def _parse_dt(value: str) -> _dt.datetime:
    """A naive datetime from DICOM DT text (any UTC offset dropped)."""
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


def _injection_datetime(info: Dataset, series_dt: _dt.datetime | None, path0: Path) -> _dt.datetime:
    """The radiopharmaceutical start: its DateTime, or its Time on the SeriesDate."""
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
    inj = _dt.datetime.combine(series_dt.date(), t).replace(tzinfo=None)
    if inj > series_dt:  # injected before midnight, scanned after
        inj -= _dt.timedelta(days=1)
    return inj
