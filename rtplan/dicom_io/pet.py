"""PET series in, as body-weight SUV: :func:`read_pet_suv`."""

from __future__ import annotations

import datetime as _dt
import logging
import math
import os
import warnings
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataset import Dataset

from rtplan._typing import BoolMask, FloatArray
from rtplan._validation import as_mask
from rtplan.dicom_io._common import (
    PET_IMAGE_STORAGE,
    _caller_stacklevel,
    _finite,
    _hint,
    _number,
    _require,
    _tag_name,
    _value,
)
from rtplan.dicom_io._files import _find_dicom_files, _pixels, _select_series
from rtplan.dicom_io._series import _flip_to_identity, _identity_grid, _sorted_series
from rtplan.errors import DicomInputError, GridMismatchError, InvalidInputError, RtplanWarning
from rtplan.grid import ImageGrid, resample_to_grid
from rtplan.lesions import MAX_PLAUSIBLE_SUV
from rtplan.tracers import F18, GA68

__all__ = [
    "HALF_LIFE_RANGE_S",
    "MAX_DECAY_HALF_LIVES",
    "MIN_PET_COVER",
    "PATIENT_WEIGHT_RANGE_KG",
    "read_pet_header",
    "read_pet_suv",
]

logger = logging.getLogger(__name__)

_DECAY_CORRECTIONS = ("START", "ADMIN", "NONE")

# Plausibility limits of a PET series read as SUV. All are tool defaults: wide enough for
# any patient and PET nuclide, narrow enough to catch a tag in the wrong unit.

#: PatientWeight (kg) accepted: a weight in grams or pounds, or a placeholder, is not.
PATIENT_WEIGHT_RANGE_KG = (20.0, 300.0)
#: RadionuclideHalfLife (s) accepted: one minute to ten days, around the half-lives of the
#: nuclides rtplan knows (:data:`rtplan.tracers.GA68`, :data:`rtplan.tracers.F18`) with a
#: wide margin for other PET nuclides.
HALF_LIFE_RANGE_S = (60.0, 10 * 86400.0)
#: Most half-lives between the injection and the decay-correction time (activity 1/1024).
MAX_DECAY_HALF_LIVES = 10.0
#: Fraction of the required region (the Body, else the CT grid) the PET must cover.
MIN_PET_COVER = 0.99


@dataclass(frozen=True)
class _SuvInputs:
    """Values given by the caller in place of the PET files' tags (None: read the tag)."""

    patient_weight_kg: float | None = None
    injected_dose_bq: float | None = None
    injection_datetime: _dt.datetime | None = None
    half_life_s: float | None = None
    scan_datetime: _dt.datetime | None = None
    suv_factor: float | None = None


#: The private creator of Philips PET's scale factors, in group 0x7053, and their element
#: offsets: (7053,xx00) SUV Scale Factor (SUVbw per rescaled pixel value) and (7053,xx09)
#: Activity Concentration Scale Factor (Bq/mL per rescaled pixel value), for images in
#: Units CNTS (QIBA SUV vendor-neutral pseudo-code @qiba_suv_pseudocode [V-3p]; also read
#: by @fritsak2024_suv [V-3p]).
_PHILIPS_GROUP = 0x7053
_PHILIPS_CREATOR = "Philips PET Private Group"
_PHILIPS_SUV_FACTOR = 0x00
_PHILIPS_ACTIVITY_FACTOR = 0x09


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
    require_cover: npt.ArrayLike | None = None,
    suv_factor: float | None = None,
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

    Units ``GML`` are read as SUVbw already. Units ``CNTS`` (Philips) are scaled by the
    Philips SUV Scale Factor, private tag (7053,1000) of the private group "Philips PET
    Private Group", slice by slice; without it, by its Activity Concentration Scale Factor
    (7053,1009) to Bq/mL and then as BQML (the QIBA vendor-neutral pseudo-code
    @qiba_suv_pseudocode [V-3p]). ``suv_factor`` overrides all of this.

    Parameters
    ----------
    folder : path
        Folder searched recursively for the PET series (Modality PT).
    ct_grid : ImageGrid, optional
        When given, the SUV is resampled (trilinear, :func:`rtplan.grid.resample_to_grid`)
        onto this grid; the FrameOfReferenceUIDs must match when both are known, and the
        PET must cover the anatomy (``require_cover``). A CT voxel centre within the PET's
        outer voxels (up to their edges) takes the nearest edge value.
    series_uid : str, optional
        SeriesInstanceUID when the folder holds several PET series.
    patient_weight_kg, injected_dose_bq, injection_datetime, half_life_s, scan_datetime
        Explicit values (kg, Bq, naive datetime, s, naive datetime) that take the place of
        PatientWeight, RadionuclideTotalDose, the radiopharmaceutical start, the
        RadionuclideHalfLife and the decay-correction reference time. Without them a
        missing tag raises an error naming it.
    require_cover : array_like of bool, shape ``ct_grid.shape``, optional
        The voxels of ``ct_grid`` the PET must cover, e.g. the Body: at least
        :data:`MIN_PET_COVER` of them must lie within the PET's voxels, or the PET is
        refused (a PET beside the anatomy reads as SUV 0: no lesion anywhere). Default:
        the whole ``ct_grid``. Needs ``ct_grid``.
    suv_factor : float, optional
        SUVbw per rescaled pixel value (``pixel * RescaleSlope + RescaleIntercept``), for
        every slice, in place of what the Units and the tags give (e.g. a factor read
        from the scanner's console); the SUV plausibility limit still applies.

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
        an unknown DecayCorrection, any of the geometry errors of
        :func:`~rtplan.dicom_io.read_ct_series`, or implausible values (tool defaults):
        PatientWeight outside :data:`PATIENT_WEIGHT_RANGE_KG`, RadionuclideHalfLife
        outside :data:`HALF_LIFE_RANGE_S`, a scan more than :data:`MAX_DECAY_HALF_LIVES`
        half-lives after the injection, or an SUV above :data:`~rtplan.lesions.MAX_PLAUSIBLE_SUV`
        (a GML series holding Bq/mL, a weight in g, a dose in MBq...).
    InvalidInputError
        An explicit value out of the same ranges, or ``require_cover`` without
        ``ct_grid``.
    GridMismatchError
        PET and CT frames of reference differ, or the PET covers less than
        :data:`MIN_PET_COVER` of ``require_cover`` (the message gives both extents and
        their overlap).
    """
    given = _SuvInputs(
        patient_weight_kg=patient_weight_kg,
        injected_dose_bq=injected_dose_bq,
        injection_datetime=injection_datetime,
        half_life_s=half_life_s,
        scan_datetime=scan_datetime,
        suv_factor=suv_factor,
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
        if require_cover is not None:
            raise InvalidInputError("require_cover is a mask on ct_grid: give ct_grid too")
        return suv, pet_grid
    fa, fb = pet_grid.frame_of_reference_uid, ct_grid.frame_of_reference_uid
    if fa is not None and fb is not None and fa != fb:
        raise GridMismatchError(
            f"the PET series in {folder} has FrameOfReferenceUID {fa} but the CT grid has {fb}; "
            "the images are not registered (register them first)"
        )
    required = (
        None if require_cover is None else as_mask(require_cover, ct_grid, name="require_cover")
    )
    _check_cover(pet_grid, ct_grid, required, folder)
    padded, padded_grid = _edge_padded(suv, pet_grid)
    return resample_to_grid(padded, padded_grid, ct_grid, order=1), ct_grid


def _edge_padded(suv: FloatArray, grid: ImageGrid) -> tuple[FloatArray, ImageGrid]:
    """``suv`` with one more voxel on every side repeating the edge value, and its grid.

    A voxel's value holds for its whole box, so a CT voxel centre between the PET's outer
    voxel centre and its edge takes that value instead of fading to 0.
    """
    origin = grid.index_to_lps([-1.0, -1.0, -1.0])
    padded_grid = ImageGrid(
        shape=(grid.shape[0] + 2, grid.shape[1] + 2, grid.shape[2] + 2),
        spacing_mm=grid.spacing_mm,
        origin_mm=(float(origin[0]), float(origin[1]), float(origin[2])),
        frame_of_reference_uid=grid.frame_of_reference_uid,
    )
    return np.pad(suv, 1, mode="edge"), padded_grid


#: Tolerance (in PET voxels) of "within the PET's voxel edges", for rounding.
_EDGE_TOL = 1e-6


def _covered(pet_grid: ImageGrid, ct_grid: ImageGrid) -> BoolMask:
    """The voxels of ``ct_grid`` whose centres lie within the PET's voxels (edges included)."""
    axes_mm = ct_grid.axis_coordinates_mm()  # z, y, x of the CT's slices, rows, columns
    centre = np.asarray(pet_grid.center_mm)
    inside = []
    for axis, coords in enumerate(axes_mm):  # axis 0: k (z), 1: j (y), 2: i (x)
        points = np.repeat(centre[None, :], coords.size, axis=0)
        points[:, 2 - axis] = coords
        idx = pet_grid.lps_to_index(points)[:, axis]
        inside.append((idx >= -0.5 - _EDGE_TOL) & (idx <= pet_grid.shape[axis] - 0.5 + _EDGE_TOL))
    cover: BoolMask = inside[0][:, None, None] & inside[1][None, :, None] & inside[2][None, None, :]
    return cover


def _check_cover(
    pet_grid: ImageGrid, ct_grid: ImageGrid, required: BoolMask | None, folder: object
) -> None:
    """Refuse a PET covering less than :data:`MIN_PET_COVER` of the required region."""
    what = "CT grid" if required is None else "required region"
    need = np.ones(ct_grid.shape, bool) if required is None else required
    n_need = int(np.count_nonzero(need))
    if n_need == 0:
        return
    n_cov = int(np.count_nonzero(need & _covered(pet_grid, ct_grid)))
    fraction = n_cov / n_need
    if fraction >= 1.0:
        return
    pet_box = pet_grid.bounds_mm
    need_box = _mask_bounds(need, ct_grid)
    text = (
        f"the PET series in {folder} covers {100 * fraction:.1f} % of the {what} ({n_cov} of "
        f"{n_need} voxels): PET {_box_text(pet_box)}, {what} {_box_text(need_box)}, "
        f"overlap {_overlap_text(pet_box, need_box)} mm"
    )
    if fraction < MIN_PET_COVER:
        raise GridMismatchError(
            f"{text}; at least {100 * MIN_PET_COVER:g} % is needed (a PET beside the anatomy "
            "reads as SUV 0): check that the PET belongs to this CT"
        )
    warnings.warn(f"{text}; SUV is 0 in the rest", RtplanWarning, stacklevel=_caller_stacklevel())


_Box = tuple[tuple[float, float], tuple[float, float], tuple[float, float]]


def _mask_bounds(mask: BoolMask, grid: ImageGrid) -> _Box:
    """LPS bounds ``((x0, x1), (y0, y1), (z0, z1))`` of the voxel edges of a non-empty mask."""
    occupied = [np.flatnonzero(np.any(mask, axis=other)) for other in ((1, 2), (0, 2), (0, 1))]
    lo = grid.index_to_lps([float(o[0]) - 0.5 for o in occupied])
    hi = grid.index_to_lps([float(o[-1]) + 0.5 for o in occupied])
    a, b = np.minimum(lo, hi), np.maximum(lo, hi)
    return (
        (float(a[0]), float(b[0])),
        (float(a[1]), float(b[1])),
        (float(a[2]), float(b[2])),
    )


def _box_text(box: _Box) -> str:
    return ", ".join(f"{axis} [{lo:.1f}, {hi:.1f}]" for axis, (lo, hi) in zip("xyz", box))


def _overlap_text(a: _Box, b: _Box) -> str:
    parts = []
    for axis, (a0, a1), (b0, b1) in zip("xyz", a, b):
        lo, hi = max(a0, b0), min(a1, b1)
        parts.append(f"{axis} [{lo:.1f}, {hi:.1f}]" if lo < hi else f"{axis} none")
    return ", ".join(parts)


def read_pet_header(folder: str | os.PathLike[str], *, series_uid: str | None = None) -> Dataset:
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
    if given.suv_factor is not None:
        if not (math.isfinite(given.suv_factor) and given.suv_factor > 0):
            raise InvalidInputError(f"suv_factor must be > 0, got {given.suv_factor!r}")
        return _plausible_suv(activity * given.suv_factor, path0, units)
    if units == "GML":
        return _plausible_suv(activity, path0, units)
    if units == "CNTS":
        factors = _philips_factors(items, _PHILIPS_SUV_FACTOR)
        if factors is not None:
            return _plausible_suv(activity * factors[:, None, None], path0, units)
        to_bqml = _philips_factors(items, _PHILIPS_ACTIVITY_FACTOR)
        if to_bqml is None:
            raise DicomInputError(
                f"{path0}: tag {_tag_name('Units')} is 'CNTS' without the Philips SUV Scale "
                f"Factor (7053,1000) or Activity Concentration Scale Factor (7053,1009) of "
                f"the private group {_PHILIPS_CREATOR!r}; {_hint('suv_factor')}"
            )
        activity = activity * to_bqml[:, None, None]
    elif units != "BQML":
        raise DicomInputError(
            f"{path0}: tag {_tag_name('Units')} is {units!r}; SUV needs BQML (Bq/mL), GML or "
            f"Philips CNTS images, or {_hint('suv_factor')}"
        )
    corrected = _corrected_image(ds0, path0)
    if corrected and "ATTN" not in corrected:
        raise DicomInputError(
            f"{path0}: tag {_tag_name('CorrectedImage')} {corrected} lacks ATTN; SUV needs "
            "attenuation-corrected images"
        )
    return _plausible_suv(activity * _suv_factors(items, given)[:, None, None], path0, units)


def _philips_factors(items: list[tuple[Path, Dataset]], element: int) -> FloatArray | None:
    """The Philips private scale factor ``element`` of every slice; None when one lacks it."""
    factors = []
    for path, ds in items:
        if _PHILIPS_CREATOR not in ds.private_creators(_PHILIPS_GROUP):
            return None
        block = ds.private_block(_PHILIPS_GROUP, _PHILIPS_CREATOR)
        if element not in block:
            return None
        tag = f"Philips private tag (7053,10{element:02X})"
        value = block[element].value
        if isinstance(value, bytes):  # implicit VR without pydicom's private dictionary
            value = value.decode("ascii", errors="replace").strip(" \x00")
        factor = float(_finite(value, tag, path)[0])
        if factor <= 0:
            raise DicomInputError(f"{path}: {tag} is {factor:g}; it must be greater than 0")
        factors.append(factor)
    return np.asarray(factors)


def _corrected_image(ds0: Dataset, path0: Path) -> list[str]:
    """CorrectedImage as a list of upper-case codes (one code is a str, not a list)."""
    value = _value(ds0, "CorrectedImage", path0)
    if value is None or value == "":
        return []
    codes = [value] if isinstance(value, str) else list(value)
    return [str(c).strip().upper() for c in codes]


def _plausible_suv(suv: FloatArray, path0: Path, units: str) -> FloatArray:
    """``suv``, or an error when its maximum exceeds :data:`~rtplan.lesions.MAX_PLAUSIBLE_SUV`.

    Bq/mL values in a GML series, a weight in grams or an injected activity in MBq land
    far above it.
    """
    peak = float(np.max(suv)) if suv.size else 0.0
    if not peak <= MAX_PLAUSIBLE_SUV:
        raise DicomInputError(
            f"{path0}: SUVmax {peak:.3g} g/mL is implausible (more than "
            f"{MAX_PLAUSIBLE_SUV:g}, tool default); check {_tag_name('Units')} ({units}; GML "
            f"means the pixels are SUVbw already, not Bq/mL), {_tag_name('PatientWeight')} (kg), "
            f"{_tag_name('RadionuclideTotalDose')} (Bq) and the rescale tags"
        )
    return suv


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
    series_dt = _datetime_of(ds0, "Series", path0)
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
    """``given``, else PatientWeight (kg); an error when missing, zero or implausible."""
    lo, hi = PATIENT_WEIGHT_RANGE_KG
    if given is not None:
        if not lo <= given <= hi:
            raise InvalidInputError(
                f"patient_weight_kg must be between {lo:g} and {hi:g} kg (tool default), "
                f"got {given:g}"
            )
        return given
    w = _number(ds0, "PatientWeight", path0, 0.0)
    if w <= 0:
        raise DicomInputError(
            f"{path0}: tag {_tag_name('PatientWeight')} is missing or zero; fix the tag or "
            f"{_hint('patient_weight_kg')}"
        )
    if not lo <= w <= hi:
        raise DicomInputError(
            f"{path0}: tag {_tag_name('PatientWeight')} is {w:g} kg, outside the plausible "
            f"{lo:g}-{hi:g} kg (tool default); fix the tag (kg, not g or lb) or "
            f"{_hint('patient_weight_kg')}"
        )
    return w


def _injected_dose_bq(info: Dataset, path0: Path, given: float | None) -> float:
    """``given``, else RadionuclideTotalDose (Bq) of the radiopharmaceutical item."""
    if given is not None:
        if not (math.isfinite(given) and given > 0):
            raise InvalidInputError(f"injected_dose_bq must be > 0, got {given!r}")
        return given
    d = _number(info, "RadionuclideTotalDose", path0, 0.0)
    if d <= 0:
        raise DicomInputError(
            f"{path0}: tag {_tag_name('RadionuclideTotalDose')} in "
            f"{_tag_name('RadiopharmaceuticalInformationSequence')} is missing or zero; fix "
            f"the tag or {_hint('injected_dose_bq')}"
        )
    return d


def _half_life_s(info: Dataset, path0: Path, given: float | None) -> float:
    """``given``, else RadionuclideHalfLife (s) of the radiopharmaceutical item."""
    lo, hi = HALF_LIFE_RANGE_S
    known = f"Ga-68 {GA68.half_life_s:.1f} s, F-18 {F18.half_life_s:.1f} s"
    if given is not None:
        if not lo <= given <= hi:
            raise InvalidInputError(
                f"half_life_s must be between {lo:g} and {hi:g} s (PET nuclides, tool "
                f"default; {known}), got {given:g}"
            )
        return given
    h = _number(info, "RadionuclideHalfLife", path0, 0.0)
    if h <= 0:
        raise DicomInputError(
            f"{path0}: tag {_tag_name('RadionuclideHalfLife')} in "
            f"{_tag_name('RadiopharmaceuticalInformationSequence')} is missing; fix the tag "
            f"or {_hint('half_life_s')}"
        )
    if not lo <= h <= hi:
        raise DicomInputError(
            f"{path0}: tag {_tag_name('RadionuclideHalfLife')} is {h:g} s, outside the "
            f"half-lives of PET nuclides ({lo:g} s to {hi / 86400:g} days, tool default; "
            f"{known}); fix the tag or {_hint('half_life_s')}"
        )
    return h


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
    acq = [t for t in (_datetime_of(ds, "Acquisition", p) for p, ds in items) if t]
    candidates = []
    if series_dt is not None:
        candidates.append(series_dt)
    if acq and (series_dt is None or series_dt > min(acq)):
        candidates = [min(acq)]
    if not candidates:
        raise DicomInputError(
            f"{items[0][0]}: tags {_tag_name('SeriesTime')} and {_tag_name('AcquisitionTime')} "
            f"are missing; fix them or {_hint('scan_datetime')}"
        )
    return candidates[0]


def _slice_times(
    items: list[tuple[Path, Dataset]], scan_datetime: _dt.datetime | None
) -> list[_dt.datetime]:
    """Each slice's acquisition time (``scan_datetime`` where a slice has none)."""
    times = []
    for path, ds in items:
        t = _datetime_of(ds, "Acquisition", path) or scan_datetime
        if t is None:
            raise DicomInputError(
                f"{path}: tag {_tag_name('AcquisitionTime')} is missing (DecayCorrection "
                f"NONE needs each slice's time); fix it or {_hint('scan_datetime')}"
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
        if elapsed > MAX_DECAY_HALF_LIVES * half_life_s:
            raise DicomInputError(
                f"{path0}: the scan reference time is {elapsed / 3600:.1f} h "
                f"({elapsed / half_life_s:.0f} half-lives of {half_life_s:g} s) after the "
                f"radiopharmaceutical start; at most {MAX_DECAY_HALF_LIVES:g} are plausible "
                f"(tool default): check {_tag_name('RadiopharmaceuticalStartDateTime')}, "
                f"the series and acquisition times and {_tag_name('RadionuclideHalfLife')}, "
                f"or {_hint('injection_datetime')}"
            )
        factors.append(1.0 / (base_bq_per_g * math.exp(-math.log(2.0) * elapsed / half_life_s)))
    return np.asarray(factors)


# ====================================================================== dates and times
def _parse(kind: str, text: object, keyword: str, path: Path) -> object:
    """DICOM ``DA``, ``TM`` or ``DT`` text parsed by pydicom; an error naming the tag."""
    parse = {"DA": pydicom.valuerep.DA, "TM": pydicom.valuerep.TM, "DT": pydicom.valuerep.DT}
    try:
        return parse[kind](str(text).strip())
    except (ValueError, TypeError, OverflowError) as exc:
        raise DicomInputError(
            f"{path}: tag {_tag_name(keyword)} {str(text)!r} is not a valid {kind} value"
        ) from exc


def _parse_time(text: object, keyword: str, path: Path) -> _dt.time:
    """DICOM TM text as a time; an error naming the tag."""
    t = _parse("TM", text, keyword, path)
    if not isinstance(t, _dt.time):
        raise DicomInputError(f"{path}: tag {_tag_name(keyword)} is empty")
    return t


def _parse_da_tm(date: object, time: object, prefix: str, path: Path) -> _dt.datetime:
    """A naive datetime from DICOM DA and TM text (``<prefix>Date``, ``<prefix>Time``)."""
    d = _parse("DA", date, f"{prefix}Date", path)
    if not isinstance(d, _dt.date):
        raise DicomInputError(f"{path}: tag {_tag_name(prefix + 'Date')} is empty")
    t = _parse_time(time, f"{prefix}Time", path)
    return _dt.datetime.combine(d, t).replace(tzinfo=None)


def _parse_dt(value: object, keyword: str, path: Path) -> _dt.datetime:
    """A naive datetime from DICOM DT text (any UTC offset dropped)."""
    v = _parse("DT", value, keyword, path)
    if not isinstance(v, _dt.datetime):
        raise DicomInputError(f"{path}: tag {_tag_name(keyword)} is empty")
    return _dt.datetime(v.year, v.month, v.day, v.hour, v.minute, v.second, v.microsecond)


def _datetime_of(ds: Dataset, prefix: str, path: Path) -> _dt.datetime | None:
    """``<prefix>Date`` + ``<prefix>Time`` (or ``<prefix>DateTime``) of a dataset, or None."""
    dt_value = _value(ds, f"{prefix}DateTime", path)
    if dt_value:
        return _parse_dt(dt_value, f"{prefix}DateTime", path)
    date, time = _value(ds, f"{prefix}Date", path), _value(ds, f"{prefix}Time", path)
    if date and time:
        return _parse_da_tm(date, time, prefix, path)
    return None


def _injection_datetime(info: Dataset, series_dt: _dt.datetime | None, path0: Path) -> _dt.datetime:
    """The radiopharmaceutical start: its DateTime, or its Time on the SeriesDate."""
    value = _value(info, "RadiopharmaceuticalStartDateTime", path0)
    if value:
        return _parse_dt(value, "RadiopharmaceuticalStartDateTime", path0)
    start = _value(info, "RadiopharmaceuticalStartTime", path0)
    if not start or series_dt is None:
        raise DicomInputError(
            f"{path0}: tags {_tag_name('RadiopharmaceuticalStartDateTime')} and "
            f"{_tag_name('RadiopharmaceuticalStartTime')} (with SeriesDate) are missing; fix "
            f"them or {_hint('injection_datetime')}"
        )
    t = _parse_time(start, "RadiopharmaceuticalStartTime", path0)
    inj = _dt.datetime.combine(series_dt.date(), t).replace(tzinfo=None)
    if inj > series_dt:  # injected before midnight, scanned after
        inj -= _dt.timedelta(days=1)
    return inj
