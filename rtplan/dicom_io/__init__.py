"""DICOM in and out: CT and PET series, RTSTRUCT (read and write), RTDOSE (write and read).

One reader and one writer for the whole project. Everything that touches DICOM files goes
through this package, so the conventions are fixed here:

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

RTSTRUCT files are written with rt-utils for the dataset skeleton and ROI bookkeeping, then
corrected, and every contour is rtplan's own, traced along voxel edges, so reading the file
back gives the source mask again exactly (see :mod:`rtplan.dicom_io.rtstruct`).

Modules: :mod:`~rtplan.dicom_io.ct` (CT series in and out), :mod:`~rtplan.dicom_io.pet`
(PET series as SUV), :mod:`~rtplan.dicom_io.rtstruct` (RT Structure Sets),
:mod:`~rtplan.dicom_io.rtdose` (RT Dose); the private ``_files`` (folder scan, series
grouping), ``_series`` (slice geometry, identity direction), ``_contours`` (tracing and
filling) and ``_common`` (SOP classes, tags, UIDs, DS text, safe output).
"""

from rtplan.dicom_io._common import (
    CT_IMAGE_STORAGE,
    PET_IMAGE_STORAGE,
    RTDOSE_STORAGE,
    RTPLAN_STORAGE,
    RTSTRUCT_STORAGE,
    PatientInfo,
)
from rtplan.dicom_io.ct import CtSeries, read_ct_series, write_ct_series
from rtplan.dicom_io.pet import read_pet_header, read_pet_suv
from rtplan.dicom_io.points import read_point_rois, write_rtstruct_with_points
from rtplan.dicom_io.rtdose import (
    RtDoseHeader,
    read_rtdose,
    read_rtdose_with_header,
    write_rtdose,
)
from rtplan.dicom_io.rtstruct import read_rtstruct, write_rtstruct

__all__ = [
    "CT_IMAGE_STORAGE",
    "PET_IMAGE_STORAGE",
    "RTDOSE_STORAGE",
    "RTPLAN_STORAGE",
    "RTSTRUCT_STORAGE",
    "CtSeries",
    "PatientInfo",
    "RtDoseHeader",
    "read_ct_series",
    "read_pet_header",
    "read_pet_suv",
    "read_point_rois",
    "read_rtdose",
    "read_rtdose_with_header",
    "read_rtstruct",
    "write_ct_series",
    "write_rtdose",
    "write_rtstruct",
    "write_rtstruct_with_points",
]
