"""Landmarks as RTSTRUCT POINT ROIs, and derived ROIs marked as derived.

A landmark (a named point in LPS mm, such as ``VUA`` or ``VasDeferens_CutEnd``) travels in
an RT Structure Set as an ROI of one CLOSED contour item of ContourGeometricType ``POINT``
with a single point, RT ROI Interpreted Type ``MARKER``. :func:`write_rtstruct_with_points`
writes the structures with :func:`rtplan.dicom_io.write_rtstruct` and adds the landmarks;
:func:`read_point_rois` reads them back (an ROI is a landmark when it holds exactly one
point and nothing else).

Anything rtplan derived rather than read (anatomy completion, a landmark from a rule)
is marked in the file: its Structure Set ROI item gets ROIGenerationAlgorithm
``AUTOMATIC`` and a ROIGenerationDescription ``"rtplan derived: <how>"`` (at most 64
characters, the LO limit); :func:`read_roi_derivations` reads the marks back, so a
derived structure stays flagged after a DICOM round trip.
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence

from rtplan._typing import Vec3
from rtplan._validation import check_type
from rtplan.dicom_io._common import _atomic_write, _check_output, _ds_str
from rtplan.dicom_io._files import _dcmread
from rtplan.dicom_io.ct import CtSeries, read_ct_series
from rtplan.dicom_io.rtstruct import _read_rtstruct_dataset, write_rtstruct
from rtplan.errors import DicomInputError, InvalidInputError
from rtplan.structures import Structure, StructureSet, default_color

__all__ = [
    "DERIVED_PREFIX",
    "add_point_rois",
    "mark_derived_rois",
    "read_point_rois",
    "read_roi_derivations",
    "write_rtstruct_with_points",
]

#: Start of the ROIGenerationDescription of every ROI rtplan derived.
DERIVED_PREFIX = "rtplan derived: "

#: ROIGenerationDescription is a LO element: at most 64 characters.
_LO_MAX = 64


# ====================================================================== writing
def write_rtstruct_with_points(
    structures: StructureSet | Iterable[Structure],
    ct_folder: str | os.PathLike[str],
    path: str | os.PathLike[str],
    *,
    points: Mapping[str, Sequence[float]],
    point_derivations: Mapping[str, str] | None = None,
    label: str = "rtplan",
    description: str | None = None,
    series_description: str = "rtplan structures",
    ct_series_uid: str | None = None,
    overwrite: bool = False,
    allow_input_folder: bool = False,
    uid_seed: str | None = None,
) -> Path:
    """Write structures and landmark points as one RT Structure Set.

    The structures are written by :func:`rtplan.dicom_io.write_rtstruct` (same
    parameters), derived ones (:attr:`Structure.derived`) are marked with
    :func:`mark_derived_rois`, and each point is added as a POINT ROI
    (:func:`add_point_rois`). The file appears only when everything succeeded.

    Parameters
    ----------
    structures : StructureSet or iterable of Structure
        Structures on the CT's grid.
    ct_folder : path
        Folder of the CT series.
    path : path
        Output file.
    points : mapping of str to (x, y, z)
        Landmarks in LPS mm, by name (ROIName, at most 64 characters); may be empty.
    point_derivations : mapping of str to str, optional
        How each derived landmark was derived (keys must be in ``points``); landmarks not
        listed are written as given.
    label, description, series_description, ct_series_uid, overwrite, allow_input_folder, uid_seed
        As for :func:`rtplan.dicom_io.write_rtstruct`.

    Returns
    -------
    Path
        The written file.

    Raises
    ------
    InvalidInputError
        A point that is not three finite numbers, a point name that is also a structure
        name (case-insensitive), a derivation for a point not in ``points``, or any
        error of :func:`rtplan.dicom_io.write_rtstruct`.
    """
    items = list(structures.values()) if isinstance(structures, StructureSet) else list(structures)
    pts = _checked_points(points)
    derivations = _checked_point_derivations(point_derivations, pts)
    _check_no_clash(items, pts)
    out = Path(path)
    ct = read_ct_series(ct_folder, series_uid=ct_series_uid, pixels=False)
    _check_output(
        out,
        overwrite=overwrite,
        inputs=ct.files,
        input_folder=Path(ct_folder),
        allow_input_folder=allow_input_folder,
    )
    with tempfile.TemporaryDirectory(prefix="rtplan-points-") as staging:
        staged = write_rtstruct(
            items,
            ct_folder,
            Path(staging) / "rs.dcm",
            label=label,
            description=description,
            series_description=series_description,
            ct_series_uid=ct_series_uid,
            uid_seed=uid_seed,
        )
        ds = _dcmread(staged)
    mark_derived_rois(ds, {s.name: s.derivation for s in items if s.derived})
    add_point_rois(ds, pts, derivations=derivations, ct=ct)
    return _atomic_write(ds, out)


def _checked_points(points: Mapping[str, Sequence[float]]) -> dict[str, Vec3]:
    """``points`` as ``name -> (x, y, z)`` floats; an error for anything else."""
    check_type(points, Mapping, name="points", expected_text="a mapping of name to (x, y, z)")
    out: dict[str, Vec3] = {}
    for name, p in points.items():
        if not isinstance(name, str) or not name.strip() or len(name) > _LO_MAX:
            raise InvalidInputError(
                f"landmark names must be non-empty strings of at most {_LO_MAX} characters, "
                f"got {name!r}"
            )
        values = np.asarray(p, dtype=float).reshape(-1)
        if values.shape != (3,) or not np.all(np.isfinite(values)):
            raise InvalidInputError(
                f"landmark {name!r} must be three finite numbers (x, y, z) in mm, got {p!r}"
            )
        out[name] = (float(values[0]), float(values[1]), float(values[2]))
    return out


def _checked_point_derivations(
    derivations: Mapping[str, str] | None, points: Mapping[str, Vec3]
) -> dict[str, str]:
    if derivations is None:
        return {}
    check_type(derivations, Mapping, name="point_derivations", expected_text="a mapping")
    unknown = [k for k in derivations if k not in points]
    if unknown:
        raise InvalidInputError(
            f"point_derivations names landmarks that are not among the points: "
            f"{', '.join(map(str, unknown))}"
        )
    for k, v in derivations.items():
        check_type(v, str, name=f"derivation of landmark {k!r}")
    return dict(derivations)


def _check_no_clash(items: Sequence[Structure], points: Mapping[str, Vec3]) -> None:
    names = {s.name.strip().lower(): s.name for s in items}
    clash = [
        f"{p!r} (structure {names[p.strip().lower()]!r})"
        for p in points
        if p.strip().lower() in names
    ]
    if clash:
        raise InvalidInputError(
            f"landmarks {', '.join(clash)} share a name with a structure; ROI names must be "
            "unique (case-insensitive)"
        )


def _description(derivation: str) -> str:
    """The ROIGenerationDescription of a derived ROI, cut to the LO limit."""
    text = (DERIVED_PREFIX + " ".join(derivation.split())).replace("\\", "/")
    return text if len(text) <= _LO_MAX else text[: _LO_MAX - 3] + "..."


def mark_derived_rois(ds: Dataset, derivations: Mapping[str, str]) -> None:
    """Mark ROIs of an RTSTRUCT dataset as derived by rtplan (in place).

    Each named ROI gets ROIGenerationAlgorithm ``AUTOMATIC`` and ROIGenerationDescription
    ``"rtplan derived: <derivation>"`` (cut to 64 characters).

    Parameters
    ----------
    ds : pydicom Dataset
        An RT Structure Set.
    derivations : mapping of str to str
        ROIName -> how the ROI was derived.

    Raises
    ------
    InvalidInputError
        When a name is not an ROI of ``ds``.
    """
    by_name = {str(r.ROIName): r for r in ds.get("StructureSetROISequence", [])}
    unknown = [n for n in derivations if n not in by_name]
    if unknown:
        raise InvalidInputError(f"no ROI named {', '.join(unknown)} in the structure set")
    for name, derivation in derivations.items():
        roi = by_name[name]
        roi.ROIGenerationAlgorithm = "AUTOMATIC"
        roi.ROIGenerationDescription = _description(derivation)


def add_point_rois(
    ds: Dataset,
    points: Mapping[str, Sequence[float]],
    *,
    derivations: Mapping[str, str] | None = None,
    ct: CtSeries | None = None,
) -> None:
    """Append one POINT ROI per landmark to an RTSTRUCT dataset (in place).

    Parameters
    ----------
    ds : pydicom Dataset
        An RT Structure Set with a FrameOfReferenceUID (top level or in its Referenced
        Frame of Reference Sequence).
    points : mapping of str to (x, y, z)
        Landmarks in LPS mm.
    derivations : mapping of str to str, optional
        Landmark -> how it was derived; those ROIs are marked as by
        :func:`mark_derived_rois`.
    ct : CtSeries, optional
        The CT the structure set refers to: each point then references the CT slice
        nearest its z (Contour Image Sequence) when it lies within half a slice of one.

    Raises
    ------
    InvalidInputError
        Points that are not finite, a name already used by an ROI, or a derivation for an
        unknown point.
    DicomInputError
        When ``ds`` has no FrameOfReferenceUID.
    """
    pts = _checked_points(points)
    derived = _checked_point_derivations(derivations, pts)
    existing = {str(r.ROIName).strip().lower() for r in ds.get("StructureSetROISequence", [])}
    clash = [p for p in pts if p.strip().lower() in existing]
    if clash:
        raise InvalidInputError(f"the structure set already has ROIs named {', '.join(clash)}")
    for_uid = _frame_of_reference(ds)
    for seq in ("StructureSetROISequence", "ROIContourSequence", "RTROIObservationsSequence"):
        if seq not in ds:
            setattr(ds, seq, DicomSequence())
    number = 1 + max((int(r.ROINumber) for r in ds.StructureSetROISequence), default=0)
    observation = 1 + max(
        (int(o.ObservationNumber) for o in ds.RTROIObservationsSequence), default=0
    )
    for name, p in pts.items():
        ds.StructureSetROISequence.append(_roi_item(number, name, for_uid, derived.get(name)))
        ds.ROIContourSequence.append(_point_contour(number, name, p, ct))
        ds.RTROIObservationsSequence.append(_marker_observation(observation, number))
        number += 1
        observation += 1


def _frame_of_reference(ds: Dataset) -> str:
    if ds.get("FrameOfReferenceUID"):
        return str(ds.FrameOfReferenceUID)
    for item in ds.get("ReferencedFrameOfReferenceSequence", []):
        if item.get("FrameOfReferenceUID"):
            return str(item.FrameOfReferenceUID)
    raise DicomInputError("the structure set has no FrameOfReferenceUID to place points in")


def _roi_item(number: int, name: str, for_uid: str, derivation: str | None) -> Dataset:
    roi = Dataset()
    roi.ROINumber = number
    roi.ReferencedFrameOfReferenceUID = for_uid
    roi.ROIName = name
    roi.ROIGenerationAlgorithm = "AUTOMATIC" if derivation is not None else ""
    if derivation is not None:
        roi.ROIGenerationDescription = _description(derivation)
    return roi


def _point_contour(number: int, name: str, p: Vec3, ct: CtSeries | None) -> Dataset:
    item = Dataset()
    item.ContourGeometricType = "POINT"
    item.NumberOfContourPoints = 1
    item.ContourNumber = 1
    item.ContourData = [_ds_str(v) for v in p]
    slice_index = _nearest_slice(ct, p[2]) if ct is not None else None
    if ct is not None and slice_index is not None:
        image = Dataset()
        image.ReferencedSOPClassUID = ct.sop_class_uid
        image.ReferencedSOPInstanceUID = ct.sop_instance_uids[slice_index]
        item.ContourImageSequence = DicomSequence([image])
    rc = Dataset()
    rc.ReferencedROINumber = number
    rc.ROIDisplayColor = list(default_color(name, "landmark"))
    rc.ContourSequence = DicomSequence([item])
    return rc


def _nearest_slice(ct: CtSeries, z_mm: float) -> int | None:
    """The slice whose z is nearest ``z_mm``, when within half a slice spacing."""
    z = ct.slice_positions_mm[:, 2]
    if z.size == 0:
        return None
    k = int(np.argmin(np.abs(z - z_mm)))
    half = ct.grid.spacing_mm[0] / 2
    return k if abs(float(z[k]) - z_mm) <= half + 1e-6 else None


def _marker_observation(observation: int, number: int) -> Dataset:
    obs = Dataset()
    obs.ObservationNumber = observation
    obs.ReferencedROINumber = number
    obs.RTROIInterpretedType = "MARKER"
    obs.ROIInterpreter = ""
    return obs


# ====================================================================== reading
def read_point_rois(path: str | os.PathLike[str]) -> dict[str, Vec3]:
    """The landmarks of an RT Structure Set: ROIs made of exactly one POINT.

    Parameters
    ----------
    path : path
        The RTSTRUCT file.

    Returns
    -------
    dict of str to (x, y, z)
        ROIName (stripped, not mapped to TG-263) -> point in LPS mm. ROIs with planar
        contours, several points or none are not landmarks and are left out.

    Raises
    ------
    DicomInputError
        When the file is not an RTSTRUCT or a POINT's ContourData is not three numbers.
    """
    p = Path(path)
    ds = _read_rtstruct_dataset(p)
    contours = {int(r.ReferencedROINumber): r for r in ds.get("ROIContourSequence", [])}
    out: dict[str, Vec3] = {}
    for roi in ds.get("StructureSetROISequence", []):
        rc = contours.get(int(roi.ROINumber))
        point = _single_point(rc, p, str(roi.get("ROIName", "")))
        name = str(roi.get("ROIName", "") or "").strip()
        if point is not None and name:
            out[name] = point
    return out


def _single_point(rc: Dataset | None, p: Path, name: str) -> Vec3 | None:
    """The point of an ROI made of one POINT contour item with one point, else None."""
    items = list(rc.get("ContourSequence", [])) if rc is not None else []
    if len(items) != 1:
        return None
    item = items[0]
    if str(item.get("ContourGeometricType", "")).upper() != "POINT":
        return None
    values = [float(v) for v in item.get("ContourData", [])]
    if len(values) != 3 or not all(math.isfinite(v) for v in values):
        raise DicomInputError(
            f"{p}: POINT ROI {name!r} must hold one point (3 finite values in ContourData), "
            f"got {len(values)} values"
        )
    return (values[0], values[1], values[2])


def read_roi_derivations(path: str | os.PathLike[str]) -> dict[str, str]:
    """ROIs that rtplan marked as derived, and how they were derived.

    Parameters
    ----------
    path : path
        The RTSTRUCT file.

    Returns
    -------
    dict of str to str
        ROIName -> the text after :data:`DERIVED_PREFIX` in its ROIGenerationDescription.

    Raises
    ------
    DicomInputError
        When the file is not an RTSTRUCT.
    """
    ds = _read_rtstruct_dataset(Path(path))
    out: dict[str, str] = {}
    for roi in ds.get("StructureSetROISequence", []):
        text = str(roi.get("ROIGenerationDescription", "") or "")
        if text.startswith(DERIVED_PREFIX):
            out[str(roi.get("ROIName", "")).strip()] = text[len(DERIVED_PREFIX) :]
    return out
