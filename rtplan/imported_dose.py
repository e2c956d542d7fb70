"""Plan doses from elsewhere (a TPS, a reference engine), put on rtplan's dose grid.

rtplan writes the RTSTRUCT of the options, a planning system optimises them, and
:func:`rtplan.compare.compare_options` compares the real plans with the estimates in one
table (its ``imported_doses`` argument). This module is the part in between:

* :class:`ImportedDose`: a physical dose in Gy on its own :class:`~rtplan.grid.ImageGrid`,
  with where it came from, its DoseSummationType and what rtplan checked about it;
* :func:`read_imported_dose`: an RTDOSE file as an :class:`ImportedDose` (DoseUnits GY,
  DoseGridScaling applied, GridFrameOffsetVector read, axial grids only, the whole plan
  or plan sum only);
* :func:`dose_on_grid`: the dose trilinearly interpolated at the voxel centres of
  rtplan's dose grid, and which of those voxels the imported grid covers; a voxel it does
  not cover gets 0 Gy (as dicompyler-core counts a contour outside the dose grid);
* :func:`uncovered_pct`: how much of a structure lies outside the imported grid.

rtplan does not check an imported dose's values (it is the planning system's dose): it
checks its units, geometry, summation type and frame of reference, and says which
structures it does not cover.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from rtplan._typing import BoolMask, FloatArray
from rtplan._validation import check_type
from rtplan.dicom_io.rtdose import read_rtdose_with_header
from rtplan.dvh import StructureOnDoseGrid
from rtplan.errors import DicomInputError, GeometryError, GridMismatchError, InvalidInputError
from rtplan.grid import GRID_ATOL_MM, ImageGrid

__all__ = [
    "ACCEPTED_SUMMATION_TYPES",
    "ImportedDose",
    "check_same_frame",
    "dose_on_grid",
    "read_imported_dose",
    "uncovered_pct",
]

#: DoseSummationType values of a dose that is a whole plan (every fraction of it) or a
#: sum of plans: what the comparison needs. FRACTION, BEAM, CONTROL_POINT, BRACHY and
#: the ``*_SESSION`` / RECORD kinds are parts of a plan and are refused.
ACCEPTED_SUMMATION_TYPES: tuple[str, ...] = ("PLAN", "MULTI_PLAN")
#: DoseType values accepted: absorbed dose (EFFECTIVE is RBE-weighted, for photons the
#: same number). ERROR (a difference of two doses) is refused.
_ACCEPTED_DOSE_TYPES: tuple[str, ...] = ("PHYSICAL", "EFFECTIVE")


@dataclass(frozen=True, eq=False)
class ImportedDose:
    """A physical dose (Gy) from outside rtplan, on its own grid.

    Parameters
    ----------
    dose_gy : ndarray of float64, shape ``grid.shape``
        Dose in Gy, finite and >= 0, ``[slice, row, col]``.
    grid : ImageGrid
        Its geometry: identity direction (:func:`read_imported_dose` flips stored axes
        back); the FrameOfReferenceUID when known.
    source : str
        Where it came from: a file path, or a label such as ``"pyRadPlan PBRT"``.
    summation_type : str
        DoseSummationType, one of :data:`ACCEPTED_SUMMATION_TYPES` (default ``"PLAN"``:
        every fraction of one plan).
    dose_type : str
        DoseType, ``"PHYSICAL"`` (default) or ``"EFFECTIVE"``.
    checked : tuple of str
        What rtplan checked when reading it (e.g. ``"DoseUnits GY"``); the dose values
        themselves are the planning system's and are not checked.

    Raises
    ------
    TypeError
        ``grid`` not an ImageGrid, ``source`` not a str.
    InvalidInputError
        A dose of another shape than the grid's, negative or not finite; an empty
        ``source``; a summation or dose type rtplan cannot compare.
    GeometryError
        A grid whose direction is not the identity.

    Examples
    --------
    >>> grid = ImageGrid(shape=(2, 3, 4), spacing_mm=(3.0, 2.0, 2.0), origin_mm=(0, 0, 0))
    >>> dose = ImportedDose(np.full(grid.shape, 50.0), grid, "uniform 50 Gy")
    >>> dose.name, dose.summation_type, dose.frame_of_reference_uid
    ('uniform 50 Gy', 'PLAN', None)
    """

    dose_gy: FloatArray
    grid: ImageGrid
    source: str
    summation_type: str = "PLAN"
    dose_type: str = "PHYSICAL"
    checked: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        check_type(self.grid, ImageGrid, name="ImportedDose.grid")
        check_type(self.source, str, name="ImportedDose.source")
        if not self.source.strip():
            raise InvalidInputError("ImportedDose.source must name the file or the dose")
        dose = np.asarray(self.dose_gy, dtype=np.float64)
        if dose.shape != self.grid.shape:
            raise InvalidInputError(
                f"{self.source}: the dose has shape {dose.shape} but its grid has shape "
                f"{self.grid.shape}"
            )
        if not np.all(np.isfinite(dose)) or (dose.size and float(dose.min()) < 0.0):
            raise InvalidInputError(f"{self.source}: the dose must be finite and >= 0 Gy")
        if not self.grid.is_standard_orientation:
            raise GeometryError(
                f"{self.source}: the dose grid must have the identity direction (axial, "
                f"no flipped axis); got direction {self.grid.direction}"
            )
        _check_summation_type(self.summation_type, self.source)
        _check_dose_type(self.dose_type, self.source)
        object.__setattr__(self, "dose_gy", dose)
        object.__setattr__(self, "checked", tuple(self.checked))

    @property
    def name(self) -> str:
        """The file name of :attr:`source` (the label itself when it is not a path)."""
        return Path(self.source).name or self.source

    @property
    def frame_of_reference_uid(self) -> str | None:
        """FrameOfReferenceUID of the dose grid, when known."""
        return self.grid.frame_of_reference_uid


def _check_summation_type(summation_type: str, source: str) -> None:
    """Refuse a DoseSummationType that is not a whole plan or a plan sum."""
    if summation_type in ACCEPTED_SUMMATION_TYPES:
        return
    stated = f"is {summation_type}" if summation_type else "is missing"
    raise InvalidInputError(
        f"{source}: DoseSummationType {stated}; rtplan compares the dose of every fraction "
        f"of an option ({' or '.join(ACCEPTED_SUMMATION_TYPES)}): export the plan dose, or "
        "the plan sum, from the planning system"
    )


def _check_dose_type(dose_type: str, source: str) -> None:
    """Refuse a DoseType that is not an absorbed dose (ERROR is a dose difference)."""
    if dose_type not in _ACCEPTED_DOSE_TYPES:
        raise InvalidInputError(
            f"{source}: DoseType is {dose_type or 'missing'}, expected "
            f"{' or '.join(_ACCEPTED_DOSE_TYPES)}: export the plan's dose, not a difference"
        )


def read_imported_dose(path: str | os.PathLike[str]) -> ImportedDose:
    """Read an RTDOSE file (from a planning system) as an :class:`ImportedDose`.

    Parameters
    ----------
    path : path
        RT Dose file: DoseUnits GY, DoseType PHYSICAL or EFFECTIVE, DoseSummationType
        PLAN or MULTI_PLAN, an axial grid (axes may be flipped).

    Returns
    -------
    ImportedDose
        Pixel values times DoseGridScaling in Gy on the grid of ImagePositionPatient,
        PixelSpacing and GridFrameOffsetVector, with the FrameOfReferenceUID;
        :attr:`ImportedDose.checked` lists the header values checked.

    Raises
    ------
    DicomInputError
        Not a readable RTDOSE, DoseUnits other than GY (RELATIVE included), an oblique or
        rotated ImageOrientationPatient, a missing tag; a DoseSummationType or DoseType
        rtplan cannot compare (the message names the file and the value).
    """
    p = Path(path)
    dose_gy, grid, header = read_rtdose_with_header(p)
    try:
        return ImportedDose(
            dose_gy,
            grid,
            str(p),
            summation_type=header.summation_type,
            dose_type=header.dose_type,
            checked=(
                f"DoseUnits {header.dose_units}",
                f"DoseType {header.dose_type}",
                f"DoseSummationType {header.summation_type}",
                "axial grid",
            ),
        )
    except InvalidInputError as exc:
        raise DicomInputError(str(exc)) from exc


def _axis_weights(
    centres_mm: FloatArray, origin_mm: float, spacing_mm: float, n: int
) -> tuple[npt.NDArray[np.intp], FloatArray, BoolMask]:
    """Linear interpolation along one axis: lower index, weight of the upper one, covered.

    A point is covered when it lies within the imported voxels' extent (their centres
    +- half a voxel); between the outermost centre and that edge the edge value holds.
    """
    index = (centres_mm - origin_mm) / spacing_mm
    tol = GRID_ATOL_MM / spacing_mm
    covered = (index >= -0.5 - tol) & (index <= n - 0.5 + tol)
    clamped = np.clip(index, 0.0, n - 1.0)
    lower = np.minimum(np.floor(clamped), max(n - 2, 0)).astype(np.intp)
    weight = clamped - lower if n > 1 else np.zeros_like(clamped)
    return lower, weight, covered


def _interpolate_axis(
    values: FloatArray, axis: int, lower: npt.NDArray[np.intp], weight: FloatArray
) -> FloatArray:
    """``values`` linearly interpolated along ``axis`` at ``lower + weight``."""
    upper = np.minimum(lower + 1, values.shape[axis] - 1)
    shape = [1, 1, 1]
    shape[axis] = weight.size
    w = weight.reshape(shape)
    a = np.take(values, lower, axis=axis)
    b = np.take(values, upper, axis=axis)
    out: FloatArray = a * (1.0 - w) + b * w
    return out


def check_same_frame(imported: ImportedDose, grid: ImageGrid) -> None:
    """Refuse an imported dose whose FrameOfReferenceUID is not that of ``grid``.

    Parameters
    ----------
    imported : ImportedDose
        The dose.
    grid : ImageGrid
        The CT grid (or the dose grid, which keeps the CT's frame of reference).

    Raises
    ------
    GridMismatchError
        Both have a FrameOfReferenceUID and they differ; the message names both. When
        either is unknown nothing is checked.

    Examples
    --------
    >>> ct = ImageGrid((1, 1, 1), (1.0, 1.0, 1.0), (0, 0, 0), frame_of_reference_uid="1.2.3")
    >>> rd = ImageGrid((1, 1, 1), (1.0, 1.0, 1.0), (0, 0, 0), frame_of_reference_uid="1.2.4")
    >>> check_same_frame(ImportedDose(np.zeros((1, 1, 1)), rd, "RD.dcm"), ct)
    Traceback (most recent call last):
    ...
    rtplan.errors.GridMismatchError: RD.dcm: FrameOfReferenceUID 1.2.4 is not the CT's (1.2.3)...
    """
    mine, theirs = grid.frame_of_reference_uid, imported.frame_of_reference_uid
    if mine and theirs and mine != theirs:
        raise GridMismatchError(
            f"{imported.source}: FrameOfReferenceUID {theirs} is not the CT's ({mine}); the "
            "dose belongs to another image set or registration: export it on the CT that "
            "rtplan planned on (the CT of the RTSTRUCT rtplan wrote)"
        )


def dose_on_grid(imported: ImportedDose, dose_grid: ImageGrid) -> tuple[FloatArray, BoolMask]:
    """The imported dose at the voxel centres of ``dose_grid``, and which voxels it covers.

    Parameters
    ----------
    imported : ImportedDose
        The dose on its own grid.
    dose_grid : ImageGrid
        rtplan's dose grid (identity direction, :func:`rtplan.dose_estimate.make_dose_grid`).

    Returns
    -------
    dose_gy : ndarray of float64, shape ``dose_grid.shape``
        Trilinear interpolation of the imported dose (Gy) at each voxel centre; 0 Gy at
        the voxels the imported grid does not cover.
    covered : ndarray of bool, shape ``dose_grid.shape``
        Voxels whose centre lies within the imported voxels' extent (their centres +-
        half a voxel; in the outer half voxel the edge value holds).

    Raises
    ------
    GridMismatchError
        Both grids have a FrameOfReferenceUID and they differ (the message names both).
    GeometryError
        ``dose_grid`` is not axial with the identity direction.
    TypeError
        ``imported`` is not an ImportedDose or ``dose_grid`` not an ImageGrid.

    Notes
    -----
    Both grids are axial with the identity direction, so the interpolation is separable:
    it is done one axis at a time, on the overlap box only (the same values as
    :func:`scipy.ndimage.map_coordinates` with ``order=1`` and edge values held, with
    memory for the output only). Where the grids coincide the dose is copied exactly.

    Examples
    --------
    >>> grid = ImageGrid(shape=(2, 2, 4), spacing_mm=(2.0, 2.0, 2.0), origin_mm=(0, 0, 0))
    >>> ramp = np.broadcast_to(np.arange(4.0), grid.shape)
    >>> shifted = ImageGrid(shape=(2, 2, 4), spacing_mm=(2.0, 2.0, 2.0), origin_mm=(3, 0, 0))
    >>> dose, covered = dose_on_grid(ImportedDose(ramp, grid, "ramp"), shifted)
    >>> dose[0, 0].tolist(), covered[0, 0].tolist()
    ([1.5, 2.5, 3.0, 0.0], [True, True, True, False])

    A dose grid far from the imported one gets no dose at all:

    >>> far = ImageGrid(shape=(2, 2, 4), spacing_mm=(2.0, 2.0, 2.0), origin_mm=(500, 0, 0))
    >>> dose, covered = dose_on_grid(ImportedDose(ramp, grid, "ramp"), far)
    >>> float(dose.max()), bool(covered.any())
    (0.0, False)
    """
    check_type(imported, ImportedDose, name="imported")
    check_type(dose_grid, ImageGrid, name="dose_grid")
    if not dose_grid.is_standard_orientation:
        raise GeometryError(
            f"dose_grid must have the identity direction, got {dose_grid.direction}"
        )
    check_same_frame(imported, dose_grid)
    src = imported.grid
    per_axis = []
    for axis, lps in enumerate((2, 1, 0)):  # array axes k, j, i run along z, y, x
        centres = dose_grid.origin_mm[lps] + dose_grid.spacing_mm[axis] * np.arange(
            dose_grid.shape[axis], dtype=np.float64
        )
        per_axis.append(
            _axis_weights(centres, src.origin_mm[lps], src.spacing_mm[axis], src.shape[axis])
        )
    dose = np.zeros(dose_grid.shape, np.float64)
    covered = np.zeros(dose_grid.shape, bool)
    box = []
    for _, _, cov in per_axis:
        hits = np.flatnonzero(cov)
        if hits.size == 0:
            return dose, covered
        box.append(slice(int(hits[0]), int(hits[-1]) + 1))
    values = imported.dose_gy
    for axis, ((lower, weight, _), sl) in enumerate(zip(per_axis, box)):
        lo, w = lower[sl], weight[sl]
        first = int(lo.min())
        last = min(int(lo.max()) + 2, values.shape[axis])
        values = np.take(values, np.arange(first, last), axis=axis)  # crop to what is used
        values = _interpolate_axis(values, axis, lo - first, w)
    region = (box[0], box[1], box[2])
    dose[region] = values
    covered[region] = True
    return dose, covered


def uncovered_pct(structure: StructureOnDoseGrid, covered: BoolMask) -> float:
    """Percentage of a structure's volume in dose voxels that ``covered`` leaves out.

    Parameters
    ----------
    structure : StructureOnDoseGrid
        The structure on the dose grid (:func:`rtplan.dvh.structure_on_dose_grid`).
    covered : ndarray of bool, shape ``structure.dose_grid.shape``
        The voxels an imported dose covers (from :func:`dose_on_grid`).

    Returns
    -------
    float
        0-100 %, by volume (partly occupied voxels count with their occupied volume).

    Raises
    ------
    GridMismatchError
        ``covered`` does not have the dose grid's shape.
    """
    if covered.shape != structure.dose_grid.shape:
        raise GridMismatchError(
            f"covered has shape {covered.shape} but the dose grid of {structure.name} has "
            f"shape {structure.dose_grid.shape}"
        )
    total = float(structure.volume_cc.sum())
    if total <= 0.0:
        return 0.0
    outside = ~covered.reshape(-1)[structure.flat_index]
    return 100.0 * float(structure.volume_cc[outside].sum()) / total
