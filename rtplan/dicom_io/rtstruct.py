"""RT Structure Sets out (rt-utils skeleton, rtplan contours) and in.

:func:`write_rtstruct` lets rt-utils (:class:`rt_utils.RTStructBuilder`) build the dataset
skeleton and ROI bookkeeping, then corrects it, because rt-utils 1.2.7 (the newest
release) leaves the top-level FrameOfReferenceUID and several Type 2 attributes out, writes
ContourData values longer than the 16 characters a DS allows, swaps row and column pixel
spacing, places contours with an average slice gap, leaves RT ROI Interpreted Type empty,
accepts duplicate ROI names, and traces contours through voxel centres (a disk of radius 3
voxels keeps about 69 % of its area). rtplan replaces every contour with its own, traced
along voxel *edges*, so reading the file back with :func:`read_rtstruct` (a voxel is inside
when its centre is inside the even-odd fill of the contours of its slice) gives the source
mask again exactly.
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pydicom
from pydicom.dataelem import DataElement, RawDataElement
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence as DicomSequence
from pydicom.tag import Tag

from rtplan._typing import BoolMask, FloatArray
from rtplan._validation import check_choice
from rtplan.dicom_io._common import (
    _MANUFACTURER,
    _STUDY_COMPONENT_CLASS,
    RTSTRUCT_STORAGE,
    OnInvalid,
    _atomic_write,
    _check_lo,
    _check_output,
    _file_meta,
    _handle_invalid,
    _integer,
    _new_uid,
    _now,
    _raw_element,
    _tag_name,
    _value,
)
from rtplan.dicom_io._contours import _contours_of, _fill_polygons
from rtplan.dicom_io._files import _read_file
from rtplan.dicom_io.ct import CtSeries, read_ct_series
from rtplan.errors import DicomInputError, GridMismatchError, InvalidInputError, RtplanError
from rtplan.grid import ImageGrid
from rtplan.structures import ROLE_TO_INTERPRETED_TYPE, Structure, StructureSet, canonical_name

__all__ = ["read_rtstruct", "write_rtstruct"]

logger = logging.getLogger(__name__)

#: A contour counts as lying on a slice when it is closer than this fraction of the gap.
_ON_SLICE_FRACTION = 0.01

_INTERPRETED_TYPE_TO_ROLE: dict[str, str] = {v: k for k, v in ROLE_TO_INTERPRETED_TYPE.items()}
_INTERPRETED_TYPE_TO_ROLE.update({"ISOCENTER": "landmark", "REGISTRATION": "landmark"})

_TAG_REF_SOP_CLASS = Tag("ReferencedSOPClassUID")
_TAG_REF_SOP_INSTANCE = Tag("ReferencedSOPInstanceUID")
_TAG_GEOMETRIC_TYPE = Tag("ContourGeometricType")
_TAG_N_POINTS = Tag("NumberOfContourPoints")
_TAG_CONTOUR_NUMBER = Tag("ContourNumber")
_TAG_CONTOUR_DATA = Tag("ContourData")


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
    items = _structure_list(structures)
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
        _check_on_ct_grid(s, ct)
    ds = _rtutils_skeleton(items, ct, ct_folder)
    _fix_rtstruct(
        ds,
        ct,
        items,
        label=label,
        description=description,
        series_description=series_description,
        uid_seed=uid_seed,
    )
    _atomic_write(ds, out)
    logger.info("wrote RTSTRUCT: %d ROIs", len(items))
    return out


def _structure_list(structures: StructureSet | Iterable[Structure]) -> list[Structure]:
    """The structures as a list; an error for none, a non-Structure or a duplicate name."""
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
    return items


def _check_on_ct_grid(structure: Structure, ct: CtSeries) -> None:
    """Refuse a structure that is not on the CT's grid (naming both frames of reference)."""
    if ct.grid.equals(structure.grid):
        return
    s_for, ct_for = structure.grid.frame_of_reference_uid, ct.grid.frame_of_reference_uid
    frames = f" (FrameOfReferenceUID {s_for} vs {ct_for})" if s_for and s_for != ct_for else ""
    raise GridMismatchError(
        f"structure {structure.name!r} is on {structure.grid.describe()} but the CT series is "
        f"on {ct.grid.describe()}{frames}"
    )


def _rtutils_skeleton(
    items: list[Structure], ct: CtSeries, ct_folder: str | os.PathLike[str]
) -> Dataset:
    """rt-utils' RTSTRUCT dataset for ``items`` on ``ct``, with token contours.

    rt-utils reads the CT series from a staging folder holding links to (or copies of)
    only its files, and gets one token mask per structure (:func:`_token_mask`).
    """
    from rt_utils import RTStructBuilder  # heavy (opencv); imported on use

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
    skeleton: Dataset = rts.ds
    return skeleton


def _token_slices(structure: Structure) -> list[int]:
    """The first and last slice ``k`` a structure occupies (none when it is empty)."""
    bbox = structure.bbox
    if bbox is None:
        return []
    return sorted({bbox[0].start, bbox[0].stop - 1})


def _token_mask(structure: Structure, ct: CtSeries) -> BoolMask:
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
    *,
    label: str,
    description: str | None,
    series_description: str,
    uid_seed: str | None,
) -> None:
    """Correct rt-utils' dataset in place (see :func:`write_rtstruct`)."""
    for_uid = ct.grid.frame_of_reference_uid
    if not for_uid:
        raise DicomInputError(f"the CT series in {ct.folder} has no FrameOfReferenceUID")
    _fix_header(ds, label, description, series_description, uid_seed)
    _fix_patient_and_study(ds, ct, for_uid)
    _fix_referenced_series(ds, ct, for_uid)
    slice_z = ct.slice_positions_mm[:, 2]
    by_number = {int(r.ReferencedROINumber): r for r in ds.ROIContourSequence}
    for n, (s, ssroi, obs) in enumerate(
        zip(items, ds.StructureSetROISequence, ds.RTROIObservationsSequence), start=1
    ):
        if str(ssroi.ROIName) != s.name or int(ssroi.ROINumber) != n:
            raise RtplanError(f"rt-utils ROI bookkeeping out of step at ROI {s.name!r}")
        ssroi.ReferencedFrameOfReferenceUID = for_uid
        if "ROIDescription" in ssroi and not ssroi.ROIDescription:
            del ssroi.ROIDescription
        _fix_observation(obs, n, s)
        _fix_roi_contours(by_number[n], n, s, ct, slice_z)
    ds.ApprovalStatus = "UNAPPROVED"


def _fix_header(
    ds: Dataset,
    label: str,
    description: str | None,
    series_description: str,
    uid_seed: str | None,
) -> None:
    """New SOP instance and series, dates, label, description and manufacturer."""
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


def _fix_patient_and_study(ds: Dataset, ct: CtSeries, for_uid: str) -> None:
    """The CT's patient and study, and the Type 1 / Type 2 attributes rt-utils leaves out."""
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


def _fix_referenced_series(ds: Dataset, ct: CtSeries, for_uid: str) -> None:
    """The referenced frame of reference, study, series and every CT slice."""
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


def _fix_observation(obs: Dataset, number: int, structure: Structure) -> None:
    """ROI ``number``'s observation: numbers, interpreted type, no empty description."""
    obs.ObservationNumber = number
    obs.ReferencedROINumber = number
    obs.RTROIInterpretedType = structure.interpreted_type
    obs.ROIInterpreter = ""
    if "ROIObservationDescription" in obs:
        del obs.ROIObservationDescription


def _fix_roi_contours(
    roi: Dataset, number: int, structure: Structure, ct: CtSeries, slice_z: FloatArray
) -> None:
    """Replace rt-utils' token contours of ROI ``number`` with rtplan's (none when empty)."""
    roi.ReferencedROINumber = number
    roi.ROIDisplayColor = [int(c) for c in structure.color]
    ru_slices = {
        str(c.ContourImageSequence[0].ReferencedSOPInstanceUID)
        for c in roi.get("ContourSequence", [])
    }
    contours = _contours_of(structure, ct.grid, slice_z)
    ours = {ct.sop_instance_uids[k] for k in _token_slices(structure)}
    if ru_slices != ours:
        raise RtplanError(
            f"ROI {structure.name!r}: rt-utils and rtplan contour different CT slices; "
            "refusing to write"
        )
    seq = _contour_sequence(contours, ct)
    if len(seq):
        roi.ContourSequence = seq
    elif "ContourSequence" in roi:
        del roi.ContourSequence


def _contour_sequence(contours: list[tuple[int, int, bytes]], ct: CtSeries) -> DicomSequence:
    """A ContourSequence of CLOSED_PLANAR items from :func:`_contours_of`'s output.

    The items hold raw explicit-VR elements: written as they are, without pydicom's
    per-value conversion and validation (thousands of contour items per structure set).
    """
    sop_class = ct.sop_class_uid.encode("ascii")
    seq = DicomSequence()
    for number, (k, n_points, text) in enumerate(contours, start=1):
        img = Dataset()
        img[_TAG_REF_SOP_CLASS] = _raw_element(_TAG_REF_SOP_CLASS, "UI", sop_class)
        img[_TAG_REF_SOP_INSTANCE] = _raw_element(
            _TAG_REF_SOP_INSTANCE, "UI", ct.sop_instance_uids[k].encode("ascii")
        )
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
    return seq


# ====================================================================== RTSTRUCT in
#: Longest ROIName a DICOM LO element holds.
_LO_MAX_CHARS = 64
#: A contour point further than this beyond the image's edge (in plane) is reported
#: (tool default: a contour drawn on another image or with a wrong origin).
_FAR_OUTSIDE_MM = 10.0


def _items(ds: Dataset, keyword: str, p: Path) -> list[tuple[str, Dataset]]:
    """The items of the sequence ``keyword`` with their place for messages (none when absent)."""
    seq = _value(ds, keyword, p)
    if seq is None or seq == "":
        return []
    return [(f"{p}: {_tag_name(keyword)} item {n}", item) for n, item in enumerate(seq, start=1)]


@dataclass(frozen=True)
class _RoiTables:
    """The per-ROI items of an RTSTRUCT, by ROI number, and the file's frames of reference."""

    frames_of_reference: frozenset[str]
    contours: dict[int, Dataset]  # ROIContourSequence items
    interpreted_types: dict[int, str]  # RTROIInterpretedType, upper case ("" when absent)

    @classmethod
    def of(cls, ds: Dataset, p: Path) -> _RoiTables:
        """The tables of the RTSTRUCT dataset ``ds`` read from ``p``.

        A missing or malformed ReferencedROINumber raises an error naming the item.
        """
        contours = {
            _integer(r, "ReferencedROINumber", where): r
            for where, r in _items(ds, "ROIContourSequence", p)
        }
        types = {
            _integer(o, "ReferencedROINumber", where): str(
                _value(o, "RTROIInterpretedType", where) or ""
            ).upper()
            for where, o in _items(ds, "RTROIObservationsSequence", p)
        }
        frames = frozenset(
            str(_value(f, "FrameOfReferenceUID", where) or "")
            for where, f in _items(ds, "ReferencedFrameOfReferenceSequence", p)
        )
        return cls(
            frames_of_reference=frames - {""},
            contours=contours,
            interpreted_types=types,
        )


@dataclass(frozen=True)
class _PlanarContour:
    """A CLOSED_PLANAR contour placed on the grid slice nearest its plane."""

    slice_index: int
    plane_key: float  # fractional slice index of its plane, rounded to 0.01
    points_ji: FloatArray  # (n, 2) fractional (row, col) indices


@dataclass(frozen=True)
class _PointContour:
    """A POINT contour: the grid voxels nearest its points."""

    voxels: npt.NDArray[np.int64]  # (n, 3) (k, j, i) inside the grid


@dataclass
class _ContourIssues:
    """Contours of one ROI skipped or cut while reading, reported once per ROI."""

    skipped_kinds: dict[str, int] = field(default_factory=dict)  # OPEN_PLANAR...: count
    degenerate: int = 0  # fewer than 3 distinct points, or no area
    outside: int = 0  # entirely outside the image in plane: skipped
    far: int = 0  # reaching more than _FAR_OUTSIDE_MM beyond the image: cut
    far_mm: float = 0.0  # the furthest such point beyond the edge

    def messages(self) -> list[str]:
        """One phrase per kind of problem, for the ROI's warning."""
        out = [
            f"{n} {kind} contour(s) (tag {_tag_name('ContourGeometricType')}; only "
            "CLOSED_PLANAR and POINT are read) skipped"
            for kind, n in sorted(self.skipped_kinds.items())
        ]
        if self.degenerate:
            out.append(
                f"{self.degenerate} degenerate contour(s) (fewer than 3 distinct points or no "
                "area) skipped"
            )
        if self.outside:
            out.append(f"{self.outside} contour(s) or point(s) outside the image skipped")
        if self.far:
            out.append(
                f"{self.far} contour(s) reaching {self.far_mm:.0f} mm beyond the edge of the "
                "image (the part outside is cut)"
            )
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

    Contours that cannot be filled are skipped, never read as something else, with one
    :class:`RtplanWarning` per ROI (also with ``on_invalid="raise"``; silently with
    ``"ignore"``) naming the ROI and what was skipped: OPEN_PLANAR and OPEN_NONPLANAR
    contours (a line is not an area, so a single one does not abort the read), degenerate
    contours (fewer than 3 distinct points, or no area), contours or points outside the
    image; contours reaching more than 10 mm (tool default) beyond the image are
    reported too. An ROI name longer than the 64 characters a DICOM LO holds is read as
    its first 64 characters, with a warning. An unreadable ROIDisplayColor gives the
    default colour, with a warning.

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
        What to do with invalid content (contours off the grid's slices, non-planar
        contours, contour coordinates that are not finite numbers, duplicate names after
        mapping, a different frame of reference): raise :class:`DicomInputError`, skip it
        with an :class:`RtplanWarning`, or skip it.

    Returns
    -------
    StructureSet
        One :class:`Structure` per ROI, role from RTROIInterpretedType (ORGAN -> organ,
        PTV -> ptv, ..., unknown types -> organ) and colour from ROIDisplayColor.

    Raises
    ------
    DicomInputError
        The file is not a regular file, not an RTSTRUCT, or cannot be parsed; a missing or
        malformed ROINumber / ReferencedROINumber (naming the file, sequence item and
        tag); or invalid content with ``on_invalid="raise"``.
    """
    check_choice(on_invalid, ("raise", "warn", "ignore"), name="on_invalid")
    p = Path(path)
    ds = _read_rtstruct_dataset(p)
    rois = _items(ds, "StructureSetROISequence", p)
    if _value(ds, "StructureSetROISequence", p) is None:
        raise DicomInputError(f"{p}: tag {_tag_name('StructureSetROISequence')} is missing")
    tables = _RoiTables.of(ds, p)
    out = StructureSet(grid=grid)
    for where, roi in rois:
        number = _integer(roi, "ROINumber", where)
        raw_name = _roi_name(roi, number, where, on_invalid)
        name = (canonical_name(raw_name) or raw_name) if map_names else raw_name
        if not _on_grid_frame(roi, tables, grid, p, raw_name, on_invalid):
            continue
        role = _INTERPRETED_TYPE_TO_ROLE.get(tables.interpreted_types.get(number, ""), "organ")
        rc = tables.contours.get(number)
        color = _roi_color(rc, p, raw_name, on_invalid)
        mask = _roi_mask(rc, grid, p, raw_name, on_invalid)
        if name in out:
            _handle_invalid(
                f"{p}: ROI {raw_name!r} maps to the name {name!r} of another ROI (read with "
                "map_names=False to keep both)",
                on_invalid,
            )
            continue
        out.add(Structure(name, mask, grid, role=role, color=color))
    logger.info("read RTSTRUCT: %d ROIs", len(out))
    return out


def _roi_name(roi: Dataset, number: int, where: str, on_invalid: OnInvalid) -> str:
    """ROIName (``ROI_<number>`` when empty), cut to 64 characters with a warning."""
    value = _value(roi, "ROIName", where)
    name = str(value or "").strip() or f"ROI_{number}"
    if len(name) > _LO_MAX_CHARS:
        short = name[:_LO_MAX_CHARS]
        _handle_invalid(
            f"{where}: ROI name {name!r} has {len(name)} characters, more than the "
            f"{_LO_MAX_CHARS} a DICOM {_tag_name('ROIName')} holds",
            "warn" if on_invalid == "raise" else on_invalid,
            f"read as {short!r}",
        )
        name = short
    return name


def _read_rtstruct_dataset(p: Path) -> Dataset:
    """The dataset of the RTSTRUCT file ``p``; an error for another file."""
    ds = _read_file(p, "an RTSTRUCT file")
    modality = str(_value(ds, "Modality", p) or "")
    if modality != "RTSTRUCT" and str(_value(ds, "SOPClassUID", p) or "") != RTSTRUCT_STORAGE:
        raise DicomInputError(
            f"{p}: tag {_tag_name('Modality')} is {modality or None!r}, expected RTSTRUCT"
        )
    return ds


def _on_grid_frame(
    roi: Dataset,
    tables: _RoiTables,
    grid: ImageGrid,
    p: Path,
    raw_name: str,
    on_invalid: OnInvalid,
) -> bool:
    """False (after :func:`_handle_invalid`) when the ROI's frame of reference is not the grid's.

    The ROI's ReferencedFrameOfReferenceUID, else the file's only referenced frame; an
    unknown frame on either side is accepted.
    """
    roi_for = str(_value(roi, "ReferencedFrameOfReferenceUID", p) or "") or (
        next(iter(tables.frames_of_reference)) if len(tables.frames_of_reference) == 1 else ""
    )
    if grid.frame_of_reference_uid and roi_for and roi_for != grid.frame_of_reference_uid:
        _handle_invalid(
            f"{p}: ROI {raw_name!r} refers to FrameOfReferenceUID {roi_for} but the grid has "
            f"{grid.frame_of_reference_uid}",
            on_invalid,
        )
        return False
    return True


def _roi_color(
    rc: Dataset | None, p: Path, raw_name: str, on_invalid: OnInvalid
) -> tuple[int, int, int] | None:
    """ROIDisplayColor when it holds three whole numbers 0-255, else None (default colour).

    A value that is not three numbers 0-255 warns (the colour is cosmetic: the ROI is
    read with the default colour).
    """
    value = None if rc is None else _value(rc, "ROIDisplayColor", p)
    if value is None:
        return None
    rgb = np.atleast_1d(np.asarray(value, dtype=np.float64))
    whole = np.isfinite(rgb) & (rgb == np.round(rgb)) & (rgb >= 0) & (rgb <= 255)
    if rgb.shape == (3,) and np.all(whole):
        return (int(rgb[0]), int(rgb[1]), int(rgb[2]))
    _handle_invalid(
        f"{p}: ROI {raw_name!r}: tag {_tag_name('ROIDisplayColor')} is not three numbers 0-255",
        "warn" if on_invalid == "raise" else on_invalid,
        "the default colour is used",
    )
    return None


def _roi_mask(
    rc: Dataset | None, grid: ImageGrid, p: Path, raw_name: str, on_invalid: OnInvalid
) -> BoolMask:
    """The mask of one ROI: its POINT voxels and the even-odd fill of its planar contours."""
    mask = np.zeros(grid.shape, bool)
    planes: dict[int, dict[float, list[FloatArray]]] = {}
    issues = _ContourIssues()
    for c in rc.get("ContourSequence", []) if rc is not None else []:
        placed = _place_contour(c, grid, p, raw_name, on_invalid, issues)
        if isinstance(placed, _PointContour):
            mask[tuple(placed.voxels.T)] = True
        elif placed is not None:
            by_plane = planes.setdefault(placed.slice_index, {})
            by_plane.setdefault(placed.plane_key, []).append(placed.points_ji)
    _nz, ny, nx = grid.shape
    for k, by_plane in planes.items():
        polys = _nearest_plane(by_plane, k, p, raw_name, on_invalid)
        mask[k] ^= _fill_polygons(polys, ny, nx)
    problems = issues.messages()
    if problems:
        _handle_invalid(
            f"{p}: ROI {raw_name!r}: {'; '.join(problems)}",
            "warn" if on_invalid == "raise" else on_invalid,
            "the rest of the ROI is read",
        )
    return mask


def _place_contour(
    c: Dataset,
    grid: ImageGrid,
    p: Path,
    raw_name: str,
    on_invalid: OnInvalid,
    issues: _ContourIssues,
) -> _PlanarContour | _PointContour | None:
    """A contour item on the grid; None for an empty or invalid one (handled or counted)."""
    kind = str(_value(c, "ContourGeometricType", p) or "CLOSED_PLANAR").strip().upper()
    try:
        data = _contour_data(c)
    except (DicomInputError, ValueError) as exc:
        raise DicomInputError(f"{p}: ROI {raw_name!r}: {exc}") from exc
    if data.size == 0:
        return None
    if not np.all(np.isfinite(data)):
        _handle_invalid(
            f"{p}: ROI {raw_name!r}: tag {_tag_name('ContourData')} holds values that are not "
            "finite numbers",
            on_invalid,
            "contour skipped",
        )
        return None
    if kind not in ("POINT", "CLOSED_PLANAR"):
        issues.skipped_kinds[kind] = issues.skipped_kinds.get(kind, 0) + 1
        return None
    idx = grid.lps_to_index(data)
    if kind == "POINT":
        ijk = np.rint(idx).astype(np.int64)
        inside = grid.contains_index(ijk)
        issues.outside += int(np.count_nonzero(~inside))
        return _PointContour(voxels=ijk[inside])
    return _planar_contour(idx, data, grid, p, raw_name, on_invalid, issues)


def _planar_contour(
    idx: FloatArray,
    data: FloatArray,
    grid: ImageGrid,
    p: Path,
    raw_name: str,
    on_invalid: OnInvalid,
    issues: _ContourIssues,
) -> _PlanarContour | None:
    """A CLOSED_PLANAR contour (fractional indices ``idx``) on its slice, or None."""
    kf = idx[:, 0]
    if np.ptp(kf) > _ON_SLICE_FRACTION:
        _handle_invalid(
            f"{p}: ROI {raw_name!r} has a contour that is not in one axial plane",
            on_invalid,
            "contour skipped",
        )
        return None
    kmean = float(kf.mean())
    k = int(np.floor(kmean + 0.5))
    if k < 0 or k >= grid.shape[0]:
        _handle_invalid(
            f"{p}: ROI {raw_name!r} has a contour at z = {float(data[0, 2]):.2f} mm, "
            "outside the grid's slices",
            on_invalid,
            "contour skipped",
        )
        return None
    ji = idx[:, 1:]
    if _is_degenerate(ji):
        issues.degenerate += 1
        return None
    beyond_mm = _beyond_edge_mm(ji, grid)
    if np.all(beyond_mm[:, 0] > 0) or np.all(beyond_mm[:, 1] > 0):
        issues.outside += 1  # entirely beside the image: fills nothing
        return None
    reach = float(beyond_mm.max())
    if reach > _FAR_OUTSIDE_MM:
        issues.far += 1
        issues.far_mm = max(issues.far_mm, reach)
    return _PlanarContour(slice_index=k, plane_key=round(kmean, 2), points_ji=ji)


def _is_degenerate(ji: FloatArray) -> bool:
    """True for a polygon with fewer than 3 distinct points or no area (collinear points)."""
    if len(np.unique(np.round(ji, 6), axis=0)) < 3:
        return True
    j, i = ji[:, 0], ji[:, 1]
    twice_area = float(np.dot(i, np.roll(j, -1)) - np.dot(j, np.roll(i, -1)))
    return abs(twice_area) < 1e-9


def _beyond_edge_mm(ji: FloatArray, grid: ImageGrid) -> FloatArray:
    """How far (mm) each point lies beyond the image's row and column edges: ``(n, 2)``.

    Per axis: 0 inside the voxel edges, else the distance beyond the nearest edge,
    signed so that a point before the first edge and one past the last are both positive.
    """
    _nz, ny, nx = grid.shape
    _sz, sy, sx = grid.spacing_mm
    lo = np.array([-0.5, -0.5])
    hi = np.array([ny - 0.5, nx - 0.5])
    below = np.clip(lo - ji, 0.0, None)
    above = np.clip(ji - hi, 0.0, None)
    out: FloatArray = (below + above) * np.array([sy, sx])
    return out


def _nearest_plane(
    by_plane: dict[float, list[FloatArray]],
    k: int,
    p: Path,
    raw_name: str,
    on_invalid: OnInvalid,
) -> list[FloatArray]:
    """The contours of slice ``k``: of the plane nearest its centre when there are several.

    Several planes on one slice warn even with ``on_invalid="raise"`` (the nearest is a
    sound choice), and stay silent with ``"ignore"``.
    """
    if len(by_plane) == 1:
        return next(iter(by_plane.values()))
    best = min(by_plane, key=lambda v: abs(v - k))
    _handle_invalid(
        f"{p}: ROI {raw_name!r} has contours on {len(by_plane)} planes that all fall on slice {k}",
        "warn" if on_invalid == "raise" else on_invalid,
        "kept the plane nearest the slice centre",
    )
    return by_plane[best]


def _contour_data(contour: Dataset) -> FloatArray:
    """ContourData as an ``(n, 3)`` float array, parsed from the raw bytes when possible.

    Converting every value to a pydicom DSfloat costs seconds for a large structure set;
    the raw DS text is parsed with numpy instead.
    """
    tag = Tag(0x3006, 0x0050)
    if tag not in contour:
        return np.zeros((0, 3))
    # pydicom's annotation says DataElement, but an element not yet converted is returned raw
    elem: DataElement | RawDataElement = contour.get_item(tag)
    if isinstance(elem, RawDataElement) and elem.value is not None:
        text = elem.value.decode("ascii", errors="replace").strip(" \x00")
        values = np.array(text.split("\\"), dtype=float) if text else np.zeros(0)
    else:
        values = np.asarray(contour.ContourData, dtype=float)
    if values.size % 3:
        raise DicomInputError(f"ContourData has {values.size} values, not a multiple of 3")
    return values.reshape(-1, 3)
