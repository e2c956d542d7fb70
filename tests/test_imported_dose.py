"""Imported plan doses: reading an RTDOSE, checking it, putting it on rtplan's dose grid."""

from __future__ import annotations

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from rtplan.dicom_io import write_rtdose
from rtplan.dicom_io.rtdose import read_rtdose_with_header
from rtplan.dvh import structure_on_dose_grid
from rtplan.errors import DicomInputError, GeometryError, GridMismatchError, InvalidInputError
from rtplan.grid import ImageGrid
from rtplan.imported_dose import (
    ImportedDose,
    check_same_frame,
    dose_on_grid,
    read_imported_dose,
    uncovered_pct,
)
from rtplan.structures import Structure

GRID = ImageGrid(shape=(6, 7, 8), spacing_mm=(3.0, 2.0, 2.5), origin_mm=(-9.0, 4.0, 12.0))


def _smooth_dose(grid: ImageGrid) -> np.ndarray:
    """A dose that varies along every axis (Gy), so interpolation errors show."""
    z, y, x = grid.axis_coordinates_mm()
    return (
        40.0
        + 0.5 * z[:, None, None]
        + 0.3 * y[None, :, None] ** 1.2
        + 2.0 * np.sin(x[None, None, :] / 7.0)
    )


def _written(tmp_path, dose, grid, name="rd.dcm", **tags) -> str:
    """An RTDOSE of ``dose`` written by rtplan, then with ``tags`` changed."""
    path = write_rtdose(dose, grid, tmp_path / name, bits=32)
    if tags:
        ds = pydicom.dcmread(path)
        for key, value in tags.items():
            setattr(ds, key, value)
        ds.save_as(path)
    return str(path)


# ---------------------------------------------------------------------------- reading
def test_read_rtdose_with_header_reads_dose_grid_and_header(tmp_path):
    dose = _smooth_dose(GRID)
    path = _written(tmp_path, dose, GRID, SeriesDescription="TPS plan")
    back, grid, header = read_rtdose_with_header(path)
    assert grid.equals(GRID.with_frame_of_reference(grid.frame_of_reference_uid))
    np.testing.assert_allclose(back, dose, rtol=1e-7)
    assert header.dose_units == "GY" and header.dose_type == "PHYSICAL"
    assert header.summation_type == "PLAN" and header.description == "TPS plan"
    assert header.frame_of_reference_uid == grid.frame_of_reference_uid is not None


def test_read_imported_dose_lists_what_it_checked(tmp_path):
    imported = read_imported_dose(_written(tmp_path, _smooth_dose(GRID), GRID))
    assert imported.name == "rd.dcm" and imported.summation_type == "PLAN"
    assert "DoseUnits GY" in imported.checked and "DoseSummationType PLAN" in imported.checked
    assert imported.frame_of_reference_uid is not None


def test_flipped_axes_are_read_back_on_the_identity_direction(tmp_path):
    dose = _smooth_dose(GRID)
    path = _written(tmp_path, dose, GRID)
    ds = pydicom.dcmread(path)
    # columns run right to left, so the slice normal (row x column) points inferior and
    # the frames run from the top down: the same pixels now lie flipped in x and z
    ds.ImageOrientationPatient = [-1, 0, 0, 0, 1, 0]
    x0, y0, z0 = GRID.origin_mm
    ds.ImagePositionPatient = [x0 + 2.5 * 7, y0, z0 + 3.0 * 5]
    ds.save_as(path)
    imported = read_imported_dose(path)
    assert imported.grid.is_standard_orientation
    assert imported.grid.equals(GRID.with_frame_of_reference(imported.frame_of_reference_uid))
    np.testing.assert_allclose(imported.dose_gy, dose[::-1, :, ::-1], rtol=1e-7)


@pytest.mark.parametrize(
    ("tags", "needles"),
    [
        ({"DoseUnits": "RELATIVE"}, ["DoseUnits", "RELATIVE", "expected GY", "export"]),
        ({"DoseUnits": "CGY"}, ["DoseUnits", "'CGY'", "expected GY"]),
        (
            {"ImageOrientationPatient": [0.9553, 0.2955, 0, -0.2955, 0.9553, 0]},
            ["ImageOrientationPatient", "axial"],
        ),
        ({"DoseSummationType": "FRACTION"}, ["DoseSummationType is FRACTION", "plan sum"]),
        ({"DoseSummationType": "BEAM"}, ["DoseSummationType is BEAM"]),
        ({"DoseType": "ERROR"}, ["DoseType is ERROR"]),
    ],
)
def test_doses_rtplan_cannot_compare_are_refused_naming_file_and_tag(tmp_path, tags, needles):
    path = _written(tmp_path, _smooth_dose(GRID), GRID, **tags)
    with pytest.raises(DicomInputError) as info:
        read_imported_dose(path)
    message = str(info.value)
    assert "rd.dcm" in message
    for needle in needles:
        assert needle in message


def test_multi_plan_sums_and_effective_doses_are_accepted(tmp_path):
    path = _written(
        tmp_path, _smooth_dose(GRID), GRID, DoseSummationType="MULTI_PLAN", DoseType="EFFECTIVE"
    )
    imported = read_imported_dose(path)
    assert (imported.summation_type, imported.dose_type) == ("MULTI_PLAN", "EFFECTIVE")


@pytest.mark.parametrize(
    ("kwargs", "error", "match"),
    [
        ({"dose_gy": np.zeros((2, 2, 2))}, InvalidInputError, "shape"),
        ({"dose_gy": np.full(GRID.shape, -1.0)}, InvalidInputError, ">= 0 Gy"),
        ({"dose_gy": np.full(GRID.shape, np.nan)}, InvalidInputError, "finite"),
        ({"source": " "}, InvalidInputError, "source"),
        ({"summation_type": "FRACTION"}, InvalidInputError, "FRACTION"),
        ({"summation_type": ""}, InvalidInputError, "DoseSummationType is missing"),
        ({"grid": "not a grid"}, TypeError, "ImportedDose.grid"),
    ],
)
def test_imported_dose_is_checked_when_built(kwargs, error, match):
    args = {"dose_gy": np.zeros(GRID.shape), "grid": GRID, "source": "array"} | kwargs
    with pytest.raises(error, match=match):
        ImportedDose(**args)


def test_a_grid_that_is_not_axial_identity_is_refused():
    flipped = ImageGrid(
        shape=(2, 2, 2), spacing_mm=(1.0, 1.0, 1.0), origin_mm=(0, 0, 0),
        direction=(-1.0, 0, 0, 0, 1.0, 0, 0, 0, 1.0),
    )  # fmt: skip
    with pytest.raises(GeometryError, match="identity direction"):
        ImportedDose(np.zeros(flipped.shape), flipped, "flipped")


# ---------------------------------------------------------------------------- resampling
def test_the_same_grid_gives_the_dose_back_exactly():
    dose = _smooth_dose(GRID)
    out, covered = dose_on_grid(ImportedDose(dose, GRID, "same"), GRID)
    np.testing.assert_array_equal(out, dose)
    assert covered.all()


@pytest.mark.parametrize(
    "target",
    [
        ImageGrid(shape=(9, 9, 9), spacing_mm=(2.0, 1.5, 2.0), origin_mm=(-7.3, 3.1, 10.2)),
        ImageGrid(shape=(4, 5, 4), spacing_mm=(4.0, 3.0, 5.0), origin_mm=(-5.0, 6.0, 13.0)),
        ImageGrid(shape=(5, 6, 8), spacing_mm=(3.0, 2.0, 2.5), origin_mm=(-7.5, 5.0, 13.5)),
    ],
)
def test_interpolation_equals_map_coordinates_inside_and_zero_outside(target):
    """Differential test: the separable interpolation against scipy's trilinear one."""
    dose = _smooth_dose(GRID)
    out, covered = dose_on_grid(ImportedDose(dose, GRID, "smooth"), target)
    # fractional indices of the target's voxel centres in the imported array
    k, j, i = np.meshgrid(*(np.arange(n) for n in target.shape), indexing="ij")
    lps = target.index_to_lps(np.stack([k, j, i], axis=-1).reshape(-1, 3))
    frac = np.stack(
        [(lps[:, 2 - a] - GRID.origin_mm[2 - a]) / GRID.spacing_mm[a] for a in range(3)]
    )
    inside = np.all((frac >= -0.5 - 1e-9) & (frac <= np.array(GRID.shape)[:, None] - 0.5), 0)
    expected = ndimage.map_coordinates(dose, frac, order=1, mode="nearest")
    expected = np.where(inside, expected, 0.0).reshape(target.shape)
    np.testing.assert_array_equal(covered, inside.reshape(target.shape))
    np.testing.assert_allclose(out, expected, rtol=1e-12, atol=1e-12)
    assert covered.any() and not covered.all()


def test_a_grid_beyond_the_imported_one_gets_0_gy():
    far = ImageGrid(shape=(3, 3, 3), spacing_mm=(2.0, 2.0, 2.0), origin_mm=(0.0, 0.0, 400.0))
    out, covered = dose_on_grid(ImportedDose(_smooth_dose(GRID), GRID, "smooth"), far)
    assert not covered.any() and not out.any()


def test_a_single_frame_dose_is_held_over_its_slab():
    one = ImageGrid(shape=(1, 7, 8), spacing_mm=(3.0, 2.0, 2.5), origin_mm=(-9.0, 4.0, 12.0))
    dose = np.full(one.shape, 20.0)
    target = ImageGrid(shape=(3, 7, 8), spacing_mm=(1.0, 2.0, 2.5), origin_mm=(-9.0, 4.0, 11.0))
    out, covered = dose_on_grid(ImportedDose(dose, one, "one frame"), target)
    assert covered.all() and np.all(out == 20.0)


def test_frame_of_reference_must_be_the_cts():
    ct = GRID.with_frame_of_reference("1.2.3.4")
    other = ImportedDose(np.zeros(GRID.shape), GRID.with_frame_of_reference("1.2.3.5"), "RD.dcm")
    for check in (check_same_frame, dose_on_grid):
        with pytest.raises(GridMismatchError, match=r"RD\.dcm.*1\.2\.3\.5.*1\.2\.3\.4"):
            check(other, ct)
    # the same UID, or one that is not known, passes
    same = ImportedDose(np.zeros(GRID.shape), ct, "RD.dcm")
    unknown = ImportedDose(np.zeros(GRID.shape), GRID, "RD.dcm")
    for dose in (same, unknown):
        check_same_frame(dose, ct)
        check_same_frame(dose, GRID)


def test_uncovered_percentage_of_a_structure_half_outside():
    box = np.zeros(GRID.shape, bool)
    box[1:5, 2:5, 2:6] = True  # 4 slices
    structure = structure_on_dose_grid(Structure("Box", box, GRID), GRID)
    upper = ImageGrid(shape=(3, 7, 8), spacing_mm=GRID.spacing_mm, origin_mm=(-9.0, 4.0, 21.0))
    _, covered = dose_on_grid(ImportedDose(np.zeros(upper.shape), upper, "upper"), GRID)
    assert covered[3:].all() and not covered[:3].any()
    assert uncovered_pct(structure, covered) == pytest.approx(50.0)
    assert uncovered_pct(structure, np.ones(GRID.shape, bool)) == 0.0
    with pytest.raises(GridMismatchError, match="shape"):
        uncovered_pct(structure, np.ones((2, 2, 2), bool))
