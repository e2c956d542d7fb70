"""Tests of rtplan.dicom_io.points: landmarks as RTSTRUCT POINT ROIs, derived ROIs marked."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import pytest

from rtplan.dicom_io import read_rtstruct, write_ct_series
from rtplan.dicom_io.points import (
    DERIVED_PREFIX,
    read_point_rois,
    read_roi_derivations,
    write_rtstruct_with_points,
)
from rtplan.errors import InvalidInputError
from rtplan.grid import ImageGrid
from rtplan.structures import Structure


@pytest.fixture
def ct(tmp_path: Path) -> tuple[Path, ImageGrid]:
    grid = ImageGrid(shape=(8, 20, 24), spacing_mm=(3.0, 2.0, 2.0), origin_mm=(-20.0, -15.0, 10.0))
    folder = write_ct_series(
        np.zeros(grid.shape, np.float32),
        grid,
        tmp_path / "ct",
        patient_name="TEST^POINTS",
        patient_id="P0",
        series_description="points",
        uid_seed="points",
    )
    back_grid = ImageGrid(
        grid.shape, grid.spacing_mm, grid.origin_mm, frame_of_reference_uid=_for_uid(folder)
    )
    return Path(folder), back_grid


def _for_uid(folder) -> str:
    f = next(p for p in Path(folder).iterdir() if p.is_file())
    return str(pydicom.dcmread(f, stop_before_pixels=True).FrameOfReferenceUID)


def _box(grid: ImageGrid) -> np.ndarray:
    m = np.zeros(grid.shape, bool)
    m[2:5, 5:10, 6:12] = True
    return m


def test_landmarks_round_trip_as_point_rois(ct, tmp_path):
    folder, grid = ct
    points = {"VUA": (1.25, -3.5, 19.0), "VasDeferens_CutEnd": (0.0, 2.0, 28.123)}
    given = Structure("Bladder", _box(grid), grid)
    derived = Structure("Sacrum", _box(grid)[::-1], grid, derivation="bone from CT HU")
    out = write_rtstruct_with_points(
        [given, derived],
        folder,
        tmp_path / "rs.dcm",
        points=points,
        point_derivations={"VasDeferens_CutEnd": "atlas landmark mapped by registration"},
    )
    back = read_point_rois(out)
    assert set(back) == set(points)
    for key, p in points.items():
        assert back[key] == pytest.approx(p, abs=1e-4)
    ds = pydicom.dcmread(out)
    types = {
        int(o.ReferencedROINumber): o.RTROIInterpretedType for o in ds.RTROIObservationsSequence
    }
    by_name = {str(r.ROIName): r for r in ds.StructureSetROISequence}
    assert types[int(by_name["VUA"].ROINumber)] == "MARKER"
    contour = next(
        c
        for c in ds.ROIContourSequence
        if int(c.ReferencedROINumber) == int(by_name["VUA"].ROINumber)
    )
    assert contour.ContourSequence[0].ContourGeometricType == "POINT"
    assert int(contour.ContourSequence[0].NumberOfContourPoints) == 1
    # the planar ROIs are untouched and read back exactly
    ss = read_rtstruct(out, grid)
    assert np.array_equal(ss["Bladder"].mask, given.mask)


def test_derived_rois_are_marked_automatic_with_a_description(ct, tmp_path):
    folder, grid = ct
    derived = Structure("Sacrum", _box(grid), grid, derivation="bone from CT HU")
    out = write_rtstruct_with_points(
        [derived, Structure("Bladder", _box(grid)[:, ::-1], grid)],
        folder,
        tmp_path / "rs.dcm",
        points={"VUA": (0.0, 0.0, 19.0)},
        point_derivations={"VUA": "bottom of Bladder"},
    )
    ds = pydicom.dcmread(out)
    by_name = {str(r.ROIName): r for r in ds.StructureSetROISequence}
    assert by_name["Sacrum"].ROIGenerationAlgorithm == "AUTOMATIC"
    assert by_name["Sacrum"].ROIGenerationDescription == DERIVED_PREFIX + "bone from CT HU"
    assert "ROIGenerationDescription" not in by_name["Bladder"]
    assert read_roi_derivations(out) == {"Sacrum": "bone from CT HU", "VUA": "bottom of Bladder"}


def test_long_derivations_fit_the_lo_element(ct, tmp_path):
    folder, grid = ct
    s = Structure("Sacrum", _box(grid), grid, derivation="x" * 200)
    out = write_rtstruct_with_points([s], folder, tmp_path / "rs.dcm", points={})
    ds = pydicom.dcmread(out)
    assert len(ds.StructureSetROISequence[0].ROIGenerationDescription) <= 64


def test_point_names_must_not_clash_and_points_must_be_finite(ct, tmp_path):
    folder, grid = ct
    s = Structure("VUA", _box(grid), grid)
    with pytest.raises(InvalidInputError, match="VUA"):
        write_rtstruct_with_points([s], folder, tmp_path / "a.dcm", points={"vua": (0, 0, 19)})
    with pytest.raises(InvalidInputError, match="finite"):
        write_rtstruct_with_points(
            [Structure("B", _box(grid), grid)],
            folder,
            tmp_path / "b.dcm",
            points={"VUA": (0.0, float("nan"), 19.0)},
        )
    with pytest.raises(InvalidInputError, match="derivation"):
        write_rtstruct_with_points(
            [Structure("B", _box(grid), grid)],
            folder,
            tmp_path / "c.dcm",
            points={"VUA": (0.0, 0.0, 19.0)},
            point_derivations={"PS_Top": "x"},
        )
    assert not (tmp_path / "a.dcm").exists() and not (tmp_path / "b.dcm").exists()


def test_a_file_without_points_reads_as_no_landmarks(ct, tmp_path):
    folder, grid = ct
    out = write_rtstruct_with_points(
        [Structure("B", _box(grid), grid)], folder, tmp_path / "rs.dcm", points={}
    )
    assert read_point_rois(out) == {}
    assert read_roi_derivations(out) == {}
