"""Tests of rtplan.dicom_io: CT/PET in, RTSTRUCT in/out (rt-utils + fixes), RTDOSE out/in."""

from __future__ import annotations

import errno
import logging
import math
import os
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_fixtures import (
    SECRET_ID,
    SECRET_NAME,
    write_ct,
    write_pet,
    write_rtstruct_fixture,
)
from matplotlib.path import Path as MplPath

from rtplan.dicom_io import (
    CtSeries,
    read_ct_series,
    read_pet_suv,
    read_rtdose,
    read_rtstruct,
    write_ct_series,
    write_rtdose,
    write_rtstruct,
)
from rtplan.dicom_io._contours import _fill_polygons, _trace_slice
from rtplan.errors import DicomInputError, GridMismatchError, RtplanWarning
from rtplan.grid import ImageGrid
from rtplan.structures import Structure, StructureSet

DCIODVFY = shutil.which("dciodvfy")
if DCIODVFY is None and os.environ.get("CI"):
    raise RuntimeError("CI must install dciodvfy (Debian dicom3tools): .ci/run does")
needs_dciodvfy = pytest.mark.skipif(
    DCIODVFY is None,
    reason="dciodvfy (Debian package dicom3tools) is not installed on this machine; "
    "CI installs it (.ci/run) and runs these validation tests",
)


def dciodvfy_errors(path: Path) -> list[str]:
    out = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True, timeout=60)
    lines = (out.stdout + out.stderr).splitlines()
    return [line for line in lines if line.startswith("Error")]


def dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * np.count_nonzero(a & b) / (np.count_nonzero(a) + np.count_nonzero(b))


# ---------------------------------------------------------------------- shared synthetic CT
CT_GRID = ImageGrid(
    shape=(20, 64, 64), spacing_mm=(2.0, 0.9, 1.1), origin_mm=(-30.123456789, -25.5, -17.0)
)


@pytest.fixture(scope="module")
def ct_dir(tmp_path_factory) -> Path:
    """A 64 x 64 x 20 CT with non-square 0.9 x 1.1 mm pixels, written by write_ct_series."""
    folder = tmp_path_factory.mktemp("ct") / "ct"
    hu = np.random.default_rng(0).integers(-1000, 1500, CT_GRID.shape).astype(float)
    write_ct_series(hu, CT_GRID, folder, uid_seed="test-ct")
    return folder


@pytest.fixture(scope="module")
def ct(ct_dir) -> CtSeries:
    return read_ct_series(ct_dir)


def ellipse_disk(grid, k_range, centre_ji, radius_vox) -> np.ndarray:
    m = np.zeros(grid.shape, bool)
    j, i = np.mgrid[: grid.shape[1], : grid.shape[2]]
    disk = (j - centre_ji[0]) ** 2 + (i - centre_ji[1]) ** 2 <= radius_vox**2
    m[k_range[0] : k_range[1]] = disk
    return m


@pytest.fixture(scope="module")
def shapes(ct) -> dict[str, Structure]:
    g = ct.grid
    disk = ellipse_disk(g, (5, 8), (20, 20), 3)  # radius 3 voxels: 29 voxels per slice
    ring = np.zeros(g.shape, bool)
    ring[3:12, 30:50, 30:50] = True
    ring[3:12, 36:44, 35:45] = False  # the hole
    islands = np.zeros(g.shape, bool)
    islands[10:14, 5:12, 40:48] = True
    islands[10:14, 15:22, 52:60] = True
    saddle = np.zeros(g.shape, bool)  # diagonal voxels touching at a corner
    saddle[15, 50, 10] = saddle[15, 51, 11] = saddle[16, 50, 11] = saddle[16, 51, 10] = True
    empty = np.zeros(g.shape, bool)
    return {
        "GTV_Disk": Structure("GTV_Disk", disk, g, role="gtv"),
        "Ring": Structure("Ring", ring, g, role="avoidance"),
        "PTV_Islands": Structure("PTV_Islands", islands, g, role="ptv"),
        "Saddle": Structure("Saddle", saddle, g, role="organ"),
        "Empty": Structure("Empty", empty, g, role="ctv"),
    }


@pytest.fixture(scope="module")
def rtstruct_file(ct_dir, shapes, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("rs") / "rs.dcm"
    return write_rtstruct(
        StructureSet(shapes.values()), ct_dir, out, label="test", description="round trip"
    )


# ====================================================================== CT in
def test_ct_round_trip_same_grid_and_hu(ct_dir, ct):
    hu = np.random.default_rng(0).integers(-1000, 1500, CT_GRID.shape).astype(float)
    assert ct.grid.equals(CT_GRID)
    assert ct.grid.frame_of_reference_uid
    np.testing.assert_array_equal(ct.hu, hu.astype(np.float32))
    assert ct.hu.dtype == np.float32
    assert len(ct.sop_instance_uids) == len(set(ct.sop_instance_uids)) == 20
    for k in (0, 7, 19):
        ds = pydicom.dcmread(ct.files[k], stop_before_pixels=True)
        assert str(ds.SOPInstanceUID) == ct.sop_instance_uids[k]
        assert float(ds.ImagePositionPatient[2]) == pytest.approx(
            ct.grid.index_to_lps([k, 0, 0])[2]
        )
        assert str(ds.PatientName) == "RTPLAN^PHANTOM"


@needs_dciodvfy
def test_written_ct_passes_dciodvfy(ct):
    assert dciodvfy_errors(ct.files[0]) == []


def test_ct_sorted_by_position_not_name_or_instance_number(tmp_path):
    # file names and InstanceNumbers run against z; values encode z
    info = write_ct(tmp_path / "ct", z_positions=[12.5, 5.0, 10.0, 7.5, 15.0])
    ct = read_ct_series(tmp_path / "ct")
    z = ct.grid.axis_coordinates_mm()[0]
    np.testing.assert_allclose(z, [5.0, 7.5, 10.0, 12.5, 15.0])
    np.testing.assert_allclose(ct.hu[:, 0, 0], z * 10.0)
    sop_by_z = dict(zip(info["z"], info["sops"]))
    assert ct.sop_instance_uids == tuple(sop_by_z[v] for v in z)
    assert ct.grid.spacing_mm == (2.5, 1.0, 1.5)
    assert ct.grid.origin_mm == (-10.0, -20.0, 5.0)


def test_ct_recursive_ignores_non_dicom_and_other_modalities(tmp_path, ct_dir, rtstruct_file):
    root = tmp_path / "mixed"
    write_ct(root / "a" / "b", n_slices=4)
    (root / "notes.txt").write_text("not dicom")
    (root / "a" / "garbage.dcm").write_bytes(b"\x00" * 300)
    shutil.copy(rtstruct_file, root / "rs.dcm")
    ct = read_ct_series(root)
    assert ct.grid.shape == (4, 8, 10)


def test_ct_folder_scan_skips_a_file_pydicom_cannot_parse(tmp_path):
    info = write_ct(tmp_path / "ct", n_slices=4)
    data = info["files"][0].read_bytes()
    i = data.index(b"\x02\x00\x00\x00UL\x04\x00")  # FileMetaInformationGroupLength, UL
    bad = data[: i + 6] + b"\x03\x00" + data[i + 8 : i + 11] + data[i + 12 :]  # 3-byte UL
    (tmp_path / "ct" / "bad_length.dcm").write_bytes(bad)
    with pytest.raises(pydicom.errors.BytesLengthException):
        pydicom.dcmread(tmp_path / "ct" / "bad_length.dcm")
    assert read_ct_series(tmp_path / "ct").grid.shape[0] == 4


def test_ct_folder_scan_raises_when_a_file_cannot_be_read(tmp_path, monkeypatch):
    """pydicom's OSError about unparseable bytes skips a file; an OS error is a real error."""
    write_ct(tmp_path / "ct", n_slices=3)
    (tmp_path / "ct" / "x.dcm").write_bytes(b"DICM")
    real_dcmread = pydicom.dcmread
    error: list[OSError] = []

    def dcmread(path, *args, **kwargs):
        if Path(path).name == "x.dcm":
            raise error[0]
        return real_dcmread(path, *args, **kwargs)

    monkeypatch.setattr(pydicom, "dcmread", dcmread)
    error.append(OSError("No tag to read at file position 9E6"))  # pydicom, no errno
    assert read_ct_series(tmp_path / "ct").grid.shape[0] == 3
    error[0] = PermissionError(errno.EACCES, "Permission denied", str(tmp_path / "ct" / "x.dcm"))
    with pytest.raises(PermissionError, match="x.dcm"):
        read_ct_series(tmp_path / "ct")


def test_ct_undecodable_pixel_data_names_file_and_tag(tmp_path):
    info = write_ct(tmp_path / "ct", n_slices=3)
    ds = pydicom.dcmread(info["files"][1])
    ds.PixelData = ds.PixelData[:-4]  # shorter than Rows x Columns pixels
    ds.save_as(info["files"][1])
    assert read_ct_series(tmp_path / "ct", pixels=False).grid.shape[0] == 3
    with pytest.raises(DicomInputError, match="PixelData") as err:
        read_ct_series(tmp_path / "ct")
    assert info["files"][1].name in str(err.value)


def test_ct_two_series_listed_or_chosen(tmp_path):
    a = write_ct(tmp_path / "two" / "a", n_slices=3)
    b = write_ct(tmp_path / "two" / "b", n_slices=4)
    with pytest.raises(DicomInputError, match="2 CT series") as err:
        read_ct_series(tmp_path / "two")
    assert a["series_uid"] in str(err.value) and b["series_uid"] in str(err.value)
    assert read_ct_series(tmp_path / "two", series_uid=b["series_uid"]).grid.shape[0] == 4
    with pytest.raises(DicomInputError, match="no CT series with SeriesInstanceUID 1.2.3"):
        read_ct_series(tmp_path / "two", series_uid="1.2.3")


def test_ct_no_ct_series(tmp_path):
    (tmp_path / "x.txt").write_text("x")
    with pytest.raises(DicomInputError, match="no CT series"):
        read_ct_series(tmp_path)


@pytest.mark.parametrize(
    ("kwargs", "tag"),
    [
        ({"per_slice_extra": {2: {"GantryDetectorTilt": "15"}}}, "GantryDetectorTilt"),
        ({"iop": (0.9848, 0.1736, 0, -0.1736, 0.9848, 0)}, "ImageOrientationPatient"),
        ({"z_positions": [0.0, 2.5, 5.0, 10.0, 12.5]}, "ImagePositionPatient"),  # missing slice
        ({"z_positions": [0.0, 2.5, 5.0, 8.0, 10.0]}, "ImagePositionPatient"),  # uneven
        ({"z_positions": [0.0, 2.5, 2.5, 5.0]}, "ImagePositionPatient"),  # duplicate
        (
            {"per_slice_extra": {1: {"ImageOrientationPatient": ["0", "1", "0", "1", "0", "0"]}}},
            "ImageOrientationPatient",
        ),
        ({"per_slice_extra": {3: {"PixelSpacing": ["1.2", "1.5"]}}}, "PixelSpacing"),
    ],
)
def test_ct_bad_geometry_names_tag(tmp_path, kwargs, tag):
    write_ct(tmp_path / "bad", **kwargs)
    with pytest.raises(DicomInputError, match=tag) as err:
        read_ct_series(tmp_path / "bad")
    assert str(tmp_path / "bad") in str(err.value)


def test_ct_mixed_rows_names_file_and_tag(tmp_path):
    write_ct(tmp_path / "rows", n_slices=4)
    # rewrite one slice with another size
    odd = write_ct(tmp_path / "tmp", n_slices=1, rows=9, z_positions=[12.5])
    ds = pydicom.dcmread(odd["files"][0])
    first = pydicom.dcmread(next((tmp_path / "rows").iterdir()))
    ds.SeriesInstanceUID, ds.FrameOfReferenceUID = (
        first.SeriesInstanceUID,
        first.FrameOfReferenceUID,
    )
    ds.save_as(tmp_path / "rows" / "odd.dcm")
    with pytest.raises(DicomInputError, match=r"odd\.dcm.*Rows|Rows.*odd\.dcm"):
        read_ct_series(tmp_path / "rows")


def test_ct_flipped_orientation_is_flipped_to_identity(tmp_path):
    # feet-first style: rows run to the patient's right, slice normal points inferior
    iop = (-1, 0, 0, 0, 1, 0)
    zs = [5.0, 7.5, 10.0, 12.5]
    origin_xy = (30.0, -20.0)

    def hu(k, z):
        j, i = np.mgrid[:8, :10]
        return 100.0 * i + 10.0 * j + zs.index(z)

    info = write_ct(tmp_path / "ff", z_positions=zs, iop=iop, origin_xy=origin_xy, hu=hu)
    ct = read_ct_series(tmp_path / "ff")
    assert ct.grid.is_standard_orientation
    assert ct.flipped_axes == (True, False, True)
    kk, jj, ii = np.meshgrid(*(np.arange(n) for n in ct.grid.shape), indexing="ij")
    lps = ct.grid.index_to_lps(np.stack([kk, jj, ii], -1))
    i_file = np.rint((origin_xy[0] - lps[..., 0]) / 1.5)
    j_file = np.rint((lps[..., 1] - origin_xy[1]) / 1.0)
    z_idx = np.rint((lps[..., 2] - 5.0) / 2.5)
    np.testing.assert_array_equal(ct.hu, 100 * i_file + 10 * j_file + z_idx)
    sop_by_z = dict(zip(info["z"], info["sops"]))
    z = ct.grid.axis_coordinates_mm()[0]
    assert ct.sop_instance_uids == tuple(sop_by_z[v] for v in z)


def test_no_patient_identifiers_in_logs_or_errors(tmp_path, caplog):
    write_ct(tmp_path / "a", n_slices=3)
    write_ct(tmp_path / "b", n_slices=3)
    with caplog.at_level(logging.DEBUG, logger="rtplan"):
        ct = read_ct_series(tmp_path / "a")
        with pytest.raises(DicomInputError) as err:
            read_ct_series(tmp_path)
    for text in (caplog.text, str(err.value), repr(ct)):
        assert SECRET_NAME.split("^")[0] not in text and SECRET_ID not in text
    assert ct.patient.name == SECRET_NAME  # kept for derived objects


# ====================================================================== PET / SUV
def pet_activity(shape=(5, 6, 6)) -> np.ndarray:
    rng = np.random.default_rng(3)
    return rng.uniform(1000.0, 20000.0, shape)


def test_suv_start_matches_hand_computation(tmp_path):
    info = write_pet(
        tmp_path / "pet",
        activity_bqml=pet_activity(),
        injection_time="090000",
        series_time="100000",
    )
    act = info["activity"]
    suv, grid = read_pet_suv(tmp_path / "pet")
    # by hand: 80 kg, 200 MBq injected at 09:00, decay-corrected to the scan start 10:00,
    # Ga-68 half-life 4062.6 s
    dose_at_scan = 200e6 * 2.0 ** (-3600.0 / 4062.6)
    expected = act * 80_000.0 / dose_at_scan
    np.testing.assert_allclose(suv, expected, rtol=1e-9)
    assert grid.shape == act.shape and grid.spacing_mm == (4.0, 4.0, 4.0)


def test_suv_admin_and_none_decay(tmp_path):
    act = write_pet(tmp_path / "admin", activity_bqml=pet_activity((3, 4, 4)), decay="ADMIN")[
        "activity"
    ]
    suv, _ = read_pet_suv(tmp_path / "admin")
    np.testing.assert_allclose(suv, act * 80_000.0 / 200e6, rtol=1e-9)
    times = ["100000", "100500", "101000"]
    write_pet(
        tmp_path / "none",
        activity_bqml=pet_activity((3, 4, 4)),
        decay="NONE",
        acquisition_times=times,
    )
    suv, _ = read_pet_suv(tmp_path / "none")
    for k, minutes in enumerate((60, 65, 70)):
        dose = 200e6 * 2.0 ** (-minutes * 60.0 / 4062.6)
        np.testing.assert_allclose(suv[k], act[k] * 80_000.0 / dose, rtol=1e-9)


def test_suv_uses_acquisition_time_when_series_time_is_later(tmp_path):
    act = write_pet(
        tmp_path / "pet",
        activity_bqml=pet_activity((2, 4, 4)),
        series_time="113000",
        acquisition_times=["100000", "100200"],
    )["activity"]
    suv, _ = read_pet_suv(tmp_path / "pet")
    dose = 200e6 * 2.0 ** (-3600.0 / 4062.6)  # earliest acquisition, 10:00
    np.testing.assert_allclose(suv, act * 80_000.0 / dose, rtol=1e-9)


@pytest.mark.parametrize(
    ("missing", "tag", "override"),
    [
        ({"weight_kg": None}, "PatientWeight", {"patient_weight_kg": 80.0}),
        ({"dose_bq": None}, "RadionuclideTotalDose", {"injected_dose_bq": 200e6}),
        ({"half_life_s": None}, "RadionuclideHalfLife", {"half_life_s": 4062.6}),
        (
            {"injection_time": None},
            "RadiopharmaceuticalStartTime",
            {"injection_datetime": __import__("datetime").datetime(2024, 1, 2, 9, 0, 0)},
        ),
    ],
)
def test_suv_missing_tag_named_or_overridden(tmp_path, missing, tag, override):
    act = write_pet(tmp_path / "pet", activity_bqml=pet_activity((2, 4, 4)), **missing)["activity"]
    with pytest.raises(DicomInputError, match=tag):
        read_pet_suv(tmp_path / "pet")
    suv, _ = read_pet_suv(tmp_path / "pet", **override)
    dose = 200e6 * 2.0 ** (-3600.0 / 4062.6)
    np.testing.assert_allclose(suv, act * 80_000.0 / dose, rtol=1e-9)


def test_suv_refuses_other_units(tmp_path):
    write_pet(tmp_path / "pet", activity_bqml=pet_activity((2, 4, 4)), units="CNTS")
    with pytest.raises(DicomInputError, match="Units"):
        read_pet_suv(tmp_path / "pet")


def test_suv_resampled_onto_ct_grid_and_frames_checked(tmp_path):
    info = write_pet(tmp_path / "pet", activity_bqml=np.full((5, 6, 6), 5000.0), decay="ADMIN")
    stored = info["activity"][0, 0, 0]
    assert np.all(info["activity"] == stored)
    ct_grid = ImageGrid(
        shape=(4, 8, 8),
        spacing_mm=(2.0, 1.5, 1.5),
        origin_mm=(0.0, 0.0, 4.0),
        frame_of_reference_uid=info["for_uid"],
    )
    suv, grid = read_pet_suv(tmp_path / "pet", ct_grid)
    assert grid is ct_grid and suv.shape == ct_grid.shape
    np.testing.assert_allclose(suv, stored * 80_000.0 / 200e6, rtol=1e-9)
    with pytest.raises(GridMismatchError, match="FrameOfReferenceUID"):
        read_pet_suv(tmp_path / "pet", ct_grid.with_frame_of_reference("1.2.3.4"))


# ====================================================================== RTSTRUCT out
@needs_dciodvfy
def test_rtstruct_passes_dciodvfy(rtstruct_file):
    assert dciodvfy_errors(rtstruct_file) == []


def test_rtstruct_round_trip_dice(rtstruct_file, ct, shapes):
    ss = read_rtstruct(rtstruct_file, ct.grid)
    assert ss.names == list(shapes)
    for name, s in shapes.items():
        back = ss[name]
        assert back.role == s.role and back.color == s.color
        if s.is_empty:
            assert back.is_empty
            continue
        d = dice(back.mask, s.mask)
        assert d >= (0.90 if s.volume_cc < 2.0 else 0.97), (name, d)
        # voxel-edge contours give the mask back exactly
        np.testing.assert_array_equal(back.mask, s.mask)


def test_rtstruct_frame_of_reference_and_type2_attributes(rtstruct_file, ct):
    """rt-utils defect: FrameOfReferenceUID (Type 1) and Type 2 attributes missing."""
    ds = pydicom.dcmread(rtstruct_file)
    assert ds.FrameOfReferenceUID == ct.grid.frame_of_reference_uid
    for kw in (
        "ReferringPhysicianName",
        "AccessionNumber",
        "OperatorsName",
        "PositionReferenceIndicator",
    ):
        assert kw in ds, kw
    ref = ds.ReferencedFrameOfReferenceSequence[0]
    assert ref.FrameOfReferenceUID == ct.grid.frame_of_reference_uid
    series = ref.RTReferencedStudySequence[0].RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == ct.series_instance_uid
    assert ds.StudyInstanceUID == ct.study_instance_uid
    assert ds.StructureSetLabel == "test" and ds.StructureSetDescription == "round trip"
    assert len(ds.StructureSetDate) == 8 and ds.Manufacturer == "rtplan"
    assert all(
        r.ReferencedFrameOfReferenceUID == ds.FrameOfReferenceUID
        for r in ds.StructureSetROISequence
    )


def test_rtstruct_ds_values_at_most_16_characters(tmp_path):
    """rt-utils defect: ContourData written with more than 16 characters."""
    grid = ImageGrid(
        shape=(4, 12, 12),
        spacing_mm=(2.345678912, 0.977777777, 0.977777777),
        origin_mm=(-123.456789123, 45.678912345, -17.123456789),
    )
    write_ct_series(np.zeros(grid.shape), grid, tmp_path / "ct")
    ct = read_ct_series(tmp_path / "ct")
    # geometry tags keep as many digits as 16 characters allow
    np.testing.assert_allclose(ct.grid.spacing_mm, grid.spacing_mm, rtol=0, atol=1e-9)
    np.testing.assert_allclose(ct.grid.origin_mm, grid.origin_mm, rtol=0, atol=1e-8)
    m = np.zeros(grid.shape, bool)
    m[1:3, 2:7, 3:9] = True
    out = write_rtstruct([Structure("Box", m, ct.grid)], tmp_path / "ct", tmp_path / "rs.dcm")
    ds = pydicom.dcmread(out)
    raw = [str(v) for c in ds.ROIContourSequence[0].ContourSequence for v in c.ContourData]
    assert raw and max(len(v) for v in raw) <= 16
    np.testing.assert_array_equal(read_rtstruct(out, ct.grid)["Box"].mask, m)


def _contours(ds, roi_index=0):
    out = []
    for c in ds.ROIContourSequence[roi_index].get("ContourSequence", []):
        pts = np.asarray(c.ContourData, float).reshape(-1, 3)
        out.append((str(c.ContourImageSequence[0].ReferencedSOPInstanceUID), pts))
    return out


def test_rtstruct_non_square_pixels_not_swapped(tmp_path, ct_dir, ct):
    """rt-utils defect: row and column spacing swapped for non-square pixels."""
    m = np.zeros(ct.grid.shape, bool)
    m[5, 10:14, 20:30] = True  # 4 rows (0.9 mm) x 10 columns (1.1 mm)
    out = write_rtstruct([Structure("Rect", m, ct.grid)], ct_dir, tmp_path / "rs.dcm")
    ((_, pts),) = _contours(pydicom.dcmread(out))
    assert np.ptp(pts[:, 0]) == pytest.approx(10 * 1.1, abs=1e-3)  # x: columns
    assert np.ptp(pts[:, 1]) == pytest.approx(4 * 0.9, abs=1e-3)  # y: rows
    x0, y0, _ = ct.grid.index_to_lps([5, 10, 20])
    assert pts[:, 0].min() == pytest.approx(x0 - 0.55, abs=1e-3)
    assert pts[:, 1].min() == pytest.approx(y0 - 0.45, abs=1e-3)


def test_rtstruct_contour_z_from_each_referenced_slice(tmp_path):
    """rt-utils defect: an average slice gap assumed; we use each slice's position."""
    zs = [0.0, 2.008, 4.0, 6.008, 8.0, 10.008]  # slightly uneven, within the 1 % tolerance
    info = write_ct(tmp_path / "ct", z_positions=zs, rows=12, cols=12)
    ct = read_ct_series(tmp_path / "ct")
    m = np.zeros(ct.grid.shape, bool)
    m[:, 3:8, 4:9] = True
    out = write_rtstruct([Structure("Column", m, ct.grid)], tmp_path / "ct", tmp_path / "rs.dcm")
    z_by_sop = dict(zip(info["sops"], zs))
    contours = _contours(pydicom.dcmread(out))
    assert len(contours) == len(zs)
    for sop, pts in contours:
        np.testing.assert_allclose(pts[:, 2], z_by_sop[sop], atol=1e-4)
    assert sorted(z_by_sop[s] for s, _ in contours) == zs
    np.testing.assert_array_equal(read_rtstruct(out, ct.grid)["Column"].mask, m)


def test_rtstruct_interpreted_type_set(rtstruct_file, shapes):
    """rt-utils defect: RT ROI Interpreted Type left empty."""
    ds = pydicom.dcmread(rtstruct_file)
    types = {
        ds.StructureSetROISequence[n].ROIName: o.RTROIInterpretedType
        for n, o in enumerate(ds.RTROIObservationsSequence)
    }
    assert types == {name: s.interpreted_type for name, s in shapes.items()}
    assert types["GTV_Disk"] == "GTV" and types["PTV_Islands"] == "PTV"


def test_rtstruct_duplicate_names_refused(tmp_path, ct_dir, shapes):
    """rt-utils defect: duplicate ROI names accepted."""
    s = shapes["Ring"]
    with pytest.raises(ValueError, match="duplicate ROI name"):
        write_rtstruct([s, s.renamed("RING")], ct_dir, tmp_path / "rs.dcm")
    assert not (tmp_path / "rs.dcm").exists()


def _ring_area(pts: np.ndarray) -> float:
    x, y = pts[:, 0], pts[:, 1]
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


def test_rtstruct_small_disk_keeps_its_area(rtstruct_file, ct, shapes):
    """rt-utils defect: contours through voxel centres shrink a disk of radius 3 voxels."""
    ds = pydicom.dcmread(rtstruct_file)
    contours = _contours(ds, roi_index=0)
    disk = shapes["GTV_Disk"]
    assert len(contours) == 3  # one per slice
    pixel_area = 0.9 * 1.1
    per_slice_voxels = np.count_nonzero(disk.mask[5])
    assert per_slice_voxels == 29
    for _, pts in contours:
        area = _ring_area(pts)
        assert area == pytest.approx(per_slice_voxels * pixel_area, rel=1e-6)
        # the digitised disk is within a few % of the analytic ellipse pi * 3 * 0.9 * 3 * 1.1
        assert area == pytest.approx(math.pi * 9 * pixel_area, rel=0.05)


def test_rtstruct_ring_hole_and_islands_are_separate_contours(rtstruct_file, ct):
    ds = pydicom.dcmread(rtstruct_file)
    names = [r.ROIName for r in ds.StructureSetROISequence]
    for name, n_per_slice in (("Ring", 2), ("PTV_Islands", 2), ("Saddle", 2)):
        contours = _contours(ds, names.index(name))
        per_sop: dict[str, int] = {}
        for sop, _ in contours:
            per_sop[sop] = per_sop.get(sop, 0) + 1
        assert set(per_sop.values()) == {n_per_slice}, name
    # the empty structure is an ROI without contours
    assert "ContourSequence" not in ds.ROIContourSequence[names.index("Empty")]


def test_rtstruct_contour_image_references_right_slice(rtstruct_file, ct):
    ds = pydicom.dcmread(rtstruct_file)
    z_by_sop = dict(zip(ct.sop_instance_uids, ct.slice_positions_mm[:, 2]))
    n = 0
    for roi_index in range(len(ds.ROIContourSequence)):
        for sop, pts in _contours(ds, roi_index):
            np.testing.assert_allclose(pts[:, 2], z_by_sop[sop], atol=1e-4)
            n += 1
    assert n > 10
    refs = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    images = refs.RTReferencedSeriesSequence[0].ContourImageSequence
    assert [i.ReferencedSOPInstanceUID for i in images] == list(ct.sop_instance_uids)


def test_rtstruct_on_flipped_ct_round_trips(tmp_path):
    write_ct(
        tmp_path / "ff",
        z_positions=[5.0, 7.5, 10.0, 12.5],
        iop=(-1, 0, 0, 0, 1, 0),
        origin_xy=(30.0, -20.0),
        rows=12,
        cols=14,
    )
    ct = read_ct_series(tmp_path / "ff")
    m = np.zeros(ct.grid.shape, bool)
    m[1:3, 2:6, 1:5] = True
    m[2, 8:11, 9:13] = True
    out = write_rtstruct([Structure("Asym", m, ct.grid)], tmp_path / "ff", tmp_path / "rs.dcm")
    np.testing.assert_array_equal(read_rtstruct(out, ct.grid)["Asym"].mask, m)


def test_rtstruct_safety(tmp_path, ct_dir, ct, shapes):
    s = [shapes["Ring"]]
    with pytest.raises(ValueError, match="input CT folder"):
        write_rtstruct(s, ct_dir, ct_dir / "rs.dcm")
    with pytest.raises(ValueError, match="overwrite the input file"):
        write_rtstruct(s, ct_dir, ct.files[0], overwrite=True, allow_input_folder=True)
    inside = write_rtstruct(s, ct_dir, ct_dir / "sub" / "rs.dcm", allow_input_folder=True)
    assert inside.exists()
    shutil.rmtree(ct_dir / "sub")
    out = write_rtstruct(s, ct_dir, tmp_path / "rs.dcm")
    with pytest.raises(FileExistsError):
        write_rtstruct(s, ct_dir, out)
    write_rtstruct(s, ct_dir, out, overwrite=True)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["rs.dcm"]  # no temp file left


def test_rtstruct_grid_mismatch_refused(tmp_path, ct_dir):
    g = ImageGrid(shape=(20, 64, 64), spacing_mm=(2.0, 1.0, 1.0), origin_mm=(0, 0, 0))
    with pytest.raises(GridMismatchError, match="Wrong"):
        write_rtstruct([Structure("Wrong", np.ones(g.shape, bool), g)], ct_dir, tmp_path / "x.dcm")


# ====================================================================== contour tracing
def test_trace_then_fill_is_identity_on_random_masks():
    rng = np.random.default_rng(7)
    for _ in range(30):
        m = rng.random((13, 17)) < rng.uniform(0.2, 0.8)
        loops = _trace_slice(m)
        back = _fill_polygons([lp[:, ::-1] for lp in loops], 13, 17)
        np.testing.assert_array_equal(back, m)
        for lp in loops:  # closed rings without repeated consecutive points
            assert len(lp) >= 4 and not np.any(np.all(lp == np.roll(lp, 1, axis=0), axis=1))


def test_fill_matches_point_in_polygon_reference():
    rng = np.random.default_rng(11)
    ny, nx = 40, 50
    j, i = np.mgrid[:ny, :nx]
    centres = np.column_stack([j.ravel(), i.ravel()]) + 1e-7  # avoid exact ties
    for _ in range(10):
        polys = []
        expected = np.zeros(ny * nx, bool)
        for _ in range(rng.integers(1, 4)):
            n = rng.integers(5, 12)
            ang = np.sort(rng.uniform(0, 2 * np.pi, n))
            r = rng.uniform(3, 15, n)
            c = rng.uniform(5, 40, 2)
            p = np.column_stack([c[0] + r * np.sin(ang), c[1] + r * np.cos(ang)])
            polys.append(p)
            expected ^= MplPath(p).contains_points(centres)
        got = _fill_polygons(polys, ny, nx)
        np.testing.assert_array_equal(got.ravel(), expected)


# ====================================================================== RTSTRUCT in
def _square(x0, y0, x1, y1):
    return [(x0, y0), (x1, y0), (x1, y1), (x0, y1)]


@pytest.fixture
def other_rtstruct(tmp_path):
    """An RTSTRUCT from "another system" on the write_ct fixture grid.

    Grid: 6 slices at z = 5, 7.5, ..., 17.5; rows at y = -20 + j (1.0 mm); columns at
    x = -10 + 1.5 i. No contour edge passes through a voxel centre (no ties).
    """
    info = write_ct(tmp_path / "ct", n_slices=6, rows=20, cols=20)
    ct = read_ct_series(tmp_path / "ct")
    outer = _square(-9.0, -18.5, 10.8, -5.5)
    hole = _square(-4.3, -14.5, 5.3, -9.5)
    island = _square(-1.6, -13.2, 2.2, -11.7)  # inside the hole
    second = _square(14.2, -18.5, 17.2, -16.5)
    rois = [
        {  # unsorted slices, hole and island listed before the outer contour
            "name": "Urinary Bladder",
            "number": 7,
            "type": "ORGAN",
            "color": (255, 255, 0),
            "contours": [
                (10.0, island),
                (10.0, hole),
                (10.0, outer),
                (5.0, second),
                (5.0, outer),
                (7.5 + 1.0, outer),
            ],  # 1 mm off slice 1
        },
        {
            "name": "PTV_Boost",
            "number": 2,
            "type": "PTV",
            "color": (0, 0, 255),
            "contours": [(12.5, _square(-5.0, -14.5, 4.7, -5.5))],
        },
        {"name": "Nothing", "number": 3, "type": "CONTROL", "contours": []},
        {
            "name": "Marker",
            "number": 4,
            "type": "MARKER",
            "contours": [(15.0, [(-7.0, -18.0)], "POINT")],
        },
    ]
    path = write_rtstruct_fixture(tmp_path / "other.dcm", rois, for_uid=info["for_uid"])
    return path, ct, rois


def _expected_mask(grid, contours_by_k):
    out = np.zeros(grid.shape, bool)
    _z, y, x = grid.axis_coordinates_mm()
    yy, xx = np.meshgrid(y, x, indexing="ij")
    pts = np.column_stack([xx.ravel(), yy.ravel()])
    for k, polys in contours_by_k.items():
        acc = np.zeros(len(pts), bool)
        for p in polys:
            acc ^= MplPath(np.asarray(p)).contains_points(pts)
        out[k] = acc.reshape(yy.shape)
    return out


def test_read_rtstruct_from_other_system(other_rtstruct):
    path, ct, rois = other_rtstruct
    ss = read_rtstruct(path, ct.grid)
    assert ss.names == ["Bladder", "PTV_Boost", "Nothing", "Marker"]
    c = rois[0]["contours"]
    expected = _expected_mask(
        ct.grid, {2: [c[0][1], c[1][1], c[2][1]], 0: [c[3][1], c[4][1]], 1: [c[5][1]]}
    )
    bladder = ss["Bladder"]
    np.testing.assert_array_equal(bladder.mask, expected)
    assert bladder.mask[2, 8, 6] and not bladder.mask[2, 6, 6]  # island inside hole, hole
    assert bladder.mask[2, 4, 6] and bladder.mask[1].any() and bladder.mask[0, 2, 18]
    assert bladder.role == "organ" and bladder.color == (255, 255, 0)
    assert ss["PTV_Boost"].role == "ptv" and ss["PTV_Boost"].voxel_count > 0
    assert ss["Nothing"].is_empty and ss["Nothing"].role == "organ"
    marker = ss["Marker"]
    assert marker.role == "landmark" and marker.voxel_count == 1
    assert marker.mask[4, 2, 2]
    raw = read_rtstruct(path, ct.grid, map_names=False)
    assert "Urinary Bladder" in raw.names


def test_read_rtstruct_contour_outside_grid(tmp_path, other_rtstruct):
    path, ct, _ = other_rtstruct
    ds = pydicom.dcmread(path)
    c = ds.ROIContourSequence[1].ContourSequence[0]
    data = [float(v) for v in c.ContourData]
    data[2::3] = [40.0] * (len(data) // 3)  # far above the last slice (17.5 mm)
    c.ContourData = [f"{v:g}" for v in data]
    bad = tmp_path / "bad.dcm"
    ds.save_as(bad)
    with pytest.raises(DicomInputError, match="outside the grid"):
        read_rtstruct(bad, ct.grid)
    with pytest.warns(RtplanWarning, match="outside the grid"):
        ss = read_rtstruct(bad, ct.grid, on_invalid="warn")
    assert ss["PTV_Boost"].is_empty
    assert read_rtstruct(bad, ct.grid, on_invalid="ignore")["PTV_Boost"].is_empty


def test_read_rtstruct_warnings_point_at_the_callers_line(tmp_path, other_rtstruct):
    path, ct, _ = other_rtstruct
    ds = pydicom.dcmread(path)
    c = ds.ROIContourSequence[1].ContourSequence[0]
    data = [float(v) for v in c.ContourData]
    data[2::3] = [40.0] * (len(data) // 3)  # far above the last slice (17.5 mm)
    c.ContourData = [f"{v:g}" for v in data]
    ds.save_as(tmp_path / "bad.dcm")
    with pytest.warns(RtplanWarning, match="outside the grid") as record:
        read_rtstruct(tmp_path / "bad.dcm", ct.grid, on_invalid="warn")
    assert [Path(w.filename).name for w in record] == [Path(__file__).name]


def test_read_rtstruct_frame_of_reference_checked(other_rtstruct):
    path, ct, _ = other_rtstruct
    other = ct.grid.with_frame_of_reference("1.2.3.4.5")
    with pytest.raises(DicomInputError, match="FrameOfReferenceUID"):
        read_rtstruct(path, other)
    assert len(read_rtstruct(path, other, on_invalid="ignore")) == 0


def test_read_rtstruct_refuses_non_rtstruct(ct):
    with pytest.raises(DicomInputError, match="RTSTRUCT"):
        read_rtstruct(ct.files[0], ct.grid)


# ====================================================================== RTDOSE
def _dose(grid):
    k, j, i = np.meshgrid(*(np.arange(n) for n in grid.shape), indexing="ij")
    return 70.0 * np.exp(-((j - 30) ** 2 + (i - 34) ** 2) / 300.0) * (1 + 0.01 * k)


def test_rtdose_round_trip_and_attributes(tmp_path, ct_dir, ct):
    dose = _dose(ct.grid)
    out = write_rtdose(
        dose,
        ct.grid,
        tmp_path / "rd.dcm",
        ct_folder=ct_dir,
        description="rtplan estimate: PBRT+WPRT",
    )
    back, grid = read_rtdose(out)
    assert grid.equals(ct.grid) and grid.frame_of_reference_uid == ct.grid.frame_of_reference_uid
    ds = pydicom.dcmread(out)
    scaling = float(ds.DoseGridScaling)
    assert np.abs(back - dose).max() <= scaling / 2 + 1e-12
    assert ds.DoseUnits == "GY" and ds.DoseType == "PHYSICAL" and ds.DoseSummationType == "PLAN"
    assert ds.SeriesDescription == "rtplan estimate: PBRT+WPRT"
    assert "not a plan dose" in ds.DoseComment.lower() and "ESTIMATE" in ds.DoseComment
    assert ds.FrameOfReferenceUID == ct.grid.frame_of_reference_uid
    assert ds.StudyInstanceUID == ct.study_instance_uid
    assert [float(v) for v in ds.GridFrameOffsetVector] == pytest.approx(
        [2.0 * k for k in range(20)]
    )


@needs_dciodvfy
def test_rtdose_passes_dciodvfy(tmp_path, ct_dir, ct):
    out = write_rtdose(_dose(ct.grid), ct.grid, tmp_path / "rd.dcm", ct_folder=ct)
    assert dciodvfy_errors(out) == []


@needs_dciodvfy
def test_rtdose_32_bit_round_trip_attributes_checked_on_16_bit_copy(tmp_path, ct):
    # dciodvfy from Debian 12 aborts with an assertion on 32-bit pixel data, so the
    # attributes of the 32-bit file are validated on a copy with 16-bit pixel data.
    dose = _dose(ct.grid)
    out = write_rtdose(dose, ct.grid, tmp_path / "rd32.dcm", ct_folder=ct, bits=32)
    back, _ = read_rtdose(out)
    ds = pydicom.dcmread(out)
    assert ds.BitsAllocated == 32
    assert np.abs(back - dose).max() <= float(ds.DoseGridScaling) / 2 + 1e-12
    copy = ds.copy()
    scale16 = float(dose.max()) / 65535
    copy.BitsAllocated = copy.BitsStored = 16
    copy.HighBit = 15
    copy.DoseGridScaling = f"{scale16:.9e}"
    copy.PixelData = np.rint(dose / scale16).astype(np.uint16).tobytes()
    copy.save_as(tmp_path / "rd16.dcm")
    assert dciodvfy_errors(tmp_path / "rd16.dcm") == []


def test_rtdose_coarse_grid_and_frame_check(tmp_path, ct):
    coarse = ImageGrid(
        shape=(5, 10, 12),
        spacing_mm=(4.0, 3.0, 3.0),
        origin_mm=(-20, -10, -15),
        frame_of_reference_uid=ct.grid.frame_of_reference_uid,
    )
    dose = np.random.default_rng(5).uniform(0, 2, coarse.shape)
    out = write_rtdose(dose, coarse, tmp_path / "rd.dcm", ct_folder=ct)
    back, grid = read_rtdose(out)
    assert grid.equals(coarse)
    np.testing.assert_allclose(back, dose, atol=float(pydicom.dcmread(out).DoseGridScaling))
    with pytest.raises(GridMismatchError):
        write_rtdose(
            dose, coarse.with_frame_of_reference("1.2.3"), tmp_path / "x.dcm", ct_folder=ct
        )
    with pytest.raises(ValueError, match=">= 0"):
        write_rtdose(-dose, coarse, tmp_path / "y.dcm")
    with pytest.raises(FileExistsError):
        write_rtdose(dose, coarse, out, ct_folder=ct)


# ====================================================================== the shipped atlas
def test_shipped_atlas_exports_and_reads_back(tmp_path):
    atlas_mod = pytest.importorskip("rtplan.atlas", reason="rtplan.atlas not available yet")
    if "male_pelvis_postop" not in atlas_mod.list_atlases():
        pytest.skip("the shipped atlas male_pelvis_postop is not in this checkout yet")
    # a coarse grid keeps the test fast; the full 512 x 512 x 105 export is timed in the report
    atlas = atlas_mod.load_atlas("male_pelvis_postop", spacing_mm=(5.0, 3.0, 3.0))
    ct_folder = write_ct_series(atlas.ct_hu, atlas.grid, tmp_path / "ct", uid_seed="atlas")
    ct = read_ct_series(ct_folder)
    structures = [
        Structure(s.name, s.to_mask(), ct.grid, role=s.role, color=s.color)
        for s in atlas.structures.values()
    ]
    out = write_rtstruct(structures, ct_folder, tmp_path / "atlas_rs.dcm")
    if DCIODVFY is not None:
        assert dciodvfy_errors(out) == []
        assert dciodvfy_errors(ct.files[0]) == []
    back = read_rtstruct(out, ct.grid, map_names=False)
    for s in structures:
        if s.is_empty:
            continue
        d = dice(back[s.name].mask, s.mask)
        assert d >= (0.90 if s.volume_cc < 2.0 else 0.97), (s.name, d)


def test_read_rtstruct_two_planes_on_one_slice_warns_and_keeps_nearest(tmp_path):
    info = write_ct(tmp_path / "ct", n_slices=4, rows=12, cols=12)
    ct = read_ct_series(tmp_path / "ct")
    near = _square(-9.2, -18.5, -4.7, -14.5)  # on slice 0 (z = 5.0)
    far = _square(-3.2, -12.5, 2.8, -8.5)  # 0.9 mm above slice 0, still nearest to it
    path = write_rtstruct_fixture(
        tmp_path / "rs.dcm",
        [{"name": "Two", "number": 1, "contours": [(5.9, far), (5.0, near)]}],
        for_uid=info["for_uid"],
    )
    with pytest.warns(RtplanWarning, match="2 planes"):
        ss = read_rtstruct(path, ct.grid)
    np.testing.assert_array_equal(ss["Two"].mask, _expected_mask(ct.grid, {0: [near]}))


def test_write_ct_series_flipped_grid_is_written_in_identity_orientation(tmp_path):
    grid = ImageGrid(
        shape=(3, 4, 5),
        spacing_mm=(2.0, 1.0, 1.5),
        origin_mm=(10.0, 0.0, 20.0),
        direction=(-1, 0, 0, 0, 1, 0, 0, 0, -1),
    )
    hu = np.arange(60, dtype=float).reshape(grid.shape)
    write_ct_series(hu, grid, tmp_path / "ct")
    ct = read_ct_series(tmp_path / "ct")
    assert ct.grid.is_standard_orientation and ct.flipped_axes == (False, False, False)
    # the same patient position holds the same HU
    for idx in [(0, 0, 0), (2, 3, 4), (1, 2, 0)]:
        lps = grid.index_to_lps(idx)
        k, j, i = ct.grid.lps_to_nearest_index(lps)
        assert ct.hu[k, j, i] == hu[idx]
    with pytest.raises(FileExistsError):
        write_ct_series(hu, grid, tmp_path / "ct")


def test_read_pydicom_example_rtstruct():
    examples = pytest.importorskip("pydicom.examples")
    path = examples.get_path("rt_ss")  # written without the preamble / File Meta header
    ds = pydicom.dcmread(path, force=True)
    for_uid = ds.ReferencedFrameOfReferenceSequence[0].FrameOfReferenceUID
    # 10 mm voxels whose centres sit between the example's contour coordinates
    grid = ImageGrid(
        shape=(21, 30, 40),
        spacing_mm=(10.0, 10.0, 10.0),
        origin_mm=(-195.0, -145.0, -200.0),
        frame_of_reference_uid=for_uid,
    )
    ss = read_rtstruct(path, grid)
    assert ss.names == ["Body", "Isocenter 1", "Isocenter 2"]
    body = ss["Body"]
    assert body.role == "external" and ss["Isocenter 1"].role == "landmark"
    contours = {}
    for c in ds.ROIContourSequence[0].ContourSequence:
        pts = np.asarray(c.ContourData, float).reshape(-1, 3)
        k = round((pts[0, 2] + 200.0) / 10.0)
        contours.setdefault(k, []).append(pts[:, :2])
    np.testing.assert_array_equal(body.mask, _expected_mask(grid, contours))
    assert body.mask[:3].any() and not body.mask[3:].any()
    assert ss["Isocenter 1"].voxel_count == 1


def test_rtstruct_on_folder_with_several_series_and_other_objects(tmp_path, ct_dir, ct):
    folder = tmp_path / "mixed"
    shutil.copytree(ct_dir, folder / "ct1")
    other = write_ct(folder / "ct2", n_slices=3)
    write_rtdose(_dose(ct.grid), ct.grid, folder / "rd.dcm", ct_folder=ct)
    m = np.zeros(ct.grid.shape, bool)
    m[4:6, 10:20, 10:20] = True
    s = Structure("Box", m, ct.grid)
    with pytest.raises(DicomInputError, match="2 CT series"):
        write_rtstruct([s], folder, tmp_path / "rs.dcm")
    assert other["series_uid"] != ct.series_instance_uid
    out = write_rtstruct([s], folder, tmp_path / "rs.dcm", ct_series_uid=ct.series_instance_uid)
    ds = pydicom.dcmread(out)
    refs = ds.ReferencedFrameOfReferenceSequence[0].RTReferencedStudySequence[0]
    series = refs.RTReferencedSeriesSequence[0]
    assert series.SeriesInstanceUID == ct.series_instance_uid
    assert len(series.ContourImageSequence) == ct.grid.shape[0]
    np.testing.assert_array_equal(read_rtstruct(out, ct.grid)["Box"].mask, m)


def test_outputs_are_readable_by_others_per_umask(tmp_path):
    """mkstemp/mkdtemp create 0600/0700; written DICOM follows the umask like any file."""
    grid = ImageGrid(shape=(4, 8, 8), spacing_mm=(2.5, 1.0, 1.0), origin_mm=(0, 0, 0))
    old = os.umask(0o022)
    try:
        ct = write_ct_series(np.zeros(grid.shape, np.float32), grid, tmp_path / "ct")
        dose = write_rtdose(np.ones(grid.shape), grid, tmp_path / "RD.dcm", ct_folder=ct)
    finally:
        os.umask(old)
    assert (ct.stat().st_mode & 0o777) == 0o755
    assert all((f.stat().st_mode & 0o777) == 0o644 for f in ct.iterdir())
    assert (dose.stat().st_mode & 0o777) == 0o644


# ====================================================================== hostile folders, PET limits
def test_ct_symlinked_subfolder_is_followed_once_and_loops_are_not(tmp_path):
    write_ct(tmp_path / "elsewhere" / "ct", n_slices=4)
    root = tmp_path / "patient"
    root.mkdir()
    os.symlink(tmp_path / "elsewhere" / "ct", root / "linked_ct")
    os.symlink(root, root / "loop")  # a link to its own folder
    os.symlink(tmp_path / "elsewhere" / "ct", root / "again")  # the same folder twice
    first = sorted((tmp_path / "elsewhere" / "ct").iterdir())[0]
    os.symlink(first, root / "file_link.dcm")  # and one of its files
    assert read_ct_series(root).grid.shape == (4, 8, 10)


def test_pet_covering_most_of_the_region_warns(tmp_path):
    info = write_pet(tmp_path / "pet", activity_bqml=pet_activity(), decay="ADMIN")
    ct_grid = ImageGrid(
        shape=(4, 8, 20),
        spacing_mm=(2.0, 1.5, 1.5),
        origin_mm=(0.0, 0.0, 4.0),
        frame_of_reference_uid=info["for_uid"],
    )
    region = np.zeros(ct_grid.shape, bool)
    region[:, :, :10] = True  # x <= 13.5 mm: inside the PET (edge at 14 mm)
    region[0, 0, 12] = True  # one voxel beyond
    with pytest.warns(RtplanWarning, match=r"covers 99\.7 %.*SUV is 0 in the rest"):
        read_pet_suv(tmp_path / "pet", ct_grid, require_cover=region)
    with pytest.raises(ValueError, match="require_cover"):
        read_pet_suv(tmp_path / "pet", require_cover=region)


def test_pet_edge_voxels_hold_up_to_their_edge(tmp_path):
    """A CT voxel between the PET's last voxel centre and its edge takes the edge value."""
    info = write_pet(tmp_path / "pet", activity_bqml=np.full((5, 6, 6), 5000.0), decay="ADMIN")
    ct_grid = ImageGrid(  # PET voxel centres x -8..12 mm, edges -10..14 mm
        shape=(1, 1, 2),
        spacing_mm=(2.0, 1.0, 23.0),
        origin_mm=(-9.5, 0.0, 4.0),
        frame_of_reference_uid=info["for_uid"],
    )
    suv, _ = read_pet_suv(tmp_path / "pet", ct_grid)
    np.testing.assert_allclose(suv, info["activity"][0, 0, 0] * 80_000.0 / 200e6, rtol=1e-9)


def test_pet_scan_ten_half_lives_after_injection_is_refused(tmp_path):
    # injected at 11:00, scanned at 10:00: the day before, 23 h = 20 Ga-68 half-lives
    write_pet(tmp_path / "pet", activity_bqml=pet_activity((2, 4, 4)), injection_time="110000")
    with pytest.raises(DicomInputError, match=r"23\.0 h \(20 half-lives.*injection_datetime="):
        read_pet_suv(tmp_path / "pet")


def test_pet_unreadable_time_names_the_tag(tmp_path):
    write_pet(tmp_path / "pet", activity_bqml=pet_activity((2, 4, 4)), series_time="1x0000")
    with pytest.raises(DicomInputError, match=r"SeriesTime \(0008,0031\) '1x0000'"):
        read_pet_suv(tmp_path / "pet")


def test_philips_cnts_with_its_suv_scale_factor(tmp_path):
    act = write_pet(
        tmp_path / "suv", activity_bqml=pet_activity(), units="CNTS", philips={0x00: 2.5e-4}
    )["activity"]
    suv, _ = read_pet_suv(tmp_path / "suv")
    np.testing.assert_allclose(suv, act * 2.5e-4, rtol=1e-9)
    # without the SUV factor: Bq/mL from the activity factor, then as BQML
    act = write_pet(
        tmp_path / "bq", activity_bqml=pet_activity(), units="CNTS", philips={0x09: 2.0}
    )["activity"]
    suv, _ = read_pet_suv(tmp_path / "bq")
    dose = 200e6 * 2.0 ** (-3600.0 / 4062.6)
    np.testing.assert_allclose(suv, 2.0 * act * 80_000.0 / dose, rtol=1e-9)


def test_explicit_suv_factor_overrides_the_units(tmp_path):
    act = write_pet(tmp_path / "pet", activity_bqml=pet_activity((2, 4, 4)), units="CNTS")[
        "activity"
    ]
    with pytest.raises(DicomInputError, match=r"CNTS.*suv_factor="):
        read_pet_suv(tmp_path / "pet")
    suv, _ = read_pet_suv(tmp_path / "pet", suv_factor=1e-3)
    np.testing.assert_allclose(suv, act * 1e-3, rtol=1e-9)
    with pytest.raises(ValueError, match="suv_factor"):
        read_pet_suv(tmp_path / "pet", suv_factor=0.0)


def test_invalid_patient_attributes_of_the_input_ct_are_not_copied(tmp_path):
    bad = {
        "PatientBirthDate": "19501399",
        "PatientSex": "X",
        "StudyTime": "99",
        "AccessionNumber": "A" * 20,
    }
    with pytest.warns(UserWarning):  # pydicom: invalid values for their VRs
        write_ct(tmp_path / "ct", n_slices=3, per_slice_extra={k: bad for k in range(3)})
    pattern = r"PatientBirthDate \(0010,0030\), PatientSex .*StudyTime .*AccessionNumber .*empty"
    with pytest.warns(RtplanWarning, match=pattern) as caught:
        ct = read_ct_series(tmp_path / "ct")
    assert "19501399" not in str(caught[0].message)  # names the tags, never the values
    p = ct.patient
    assert (p.birth_date, p.sex, p.study_time, p.accession_number) == ("", "", "", "")
    assert p.name == SECRET_NAME and p.study_date == "20240102"  # valid ones are kept
    m = np.zeros(ct.grid.shape, bool)
    m[1, 2:5, 2:5] = True
    with pytest.warns(RtplanWarning, match="PatientBirthDate"):
        out = write_rtstruct([Structure("Box", m, ct.grid)], tmp_path / "ct", tmp_path / "rs.dcm")
    ds = pydicom.dcmread(out)
    assert ds.PatientBirthDate == "" and ds.PatientSex == "" and ds.AccessionNumber == ""
    if DCIODVFY is not None:
        assert dciodvfy_errors(out) == []


DCMCJPEG = shutil.which("dcmcjpeg")
if DCMCJPEG is None and os.environ.get("CI"):
    raise RuntimeError("CI must install dcmcjpeg (Debian dcmtk): .ci/run does")


@pytest.mark.parametrize("syntax", ["JPEG 2000 Lossless", "JPEG Lossless SV1"])
def test_compressed_ct_reads_like_the_uncompressed_one(tmp_path, syntax):
    """pylibjpeg's plugins (dependencies of rtplan) decode JPEG 2000 and JPEG Lossless."""
    from pydicom.uid import JPEG2000Lossless

    write_ct(
        tmp_path / "ct",
        n_slices=3,
        rows=32,
        cols=32,
        hu=lambda k, z: np.arange(1024.0).reshape(32, 32) * 3.0 - 1000.0 + k,
    )
    (tmp_path / "packed").mkdir()
    for f in sorted((tmp_path / "ct").iterdir()):
        out = tmp_path / "packed" / f.name
        if syntax == "JPEG 2000 Lossless":
            ds = pydicom.dcmread(f)
            ds.compress(JPEG2000Lossless)
            ds.save_as(out)
        elif DCMCJPEG is None:
            pytest.skip("dcmcjpeg (Debian dcmtk) is not installed; CI installs it")
        else:
            subprocess.run([DCMCJPEG, "--encode-lossless-sv1", f, out], check=True, timeout=60)
    ts = pydicom.dcmread(out, stop_before_pixels=True).file_meta.TransferSyntaxUID
    assert ts.is_compressed
    np.testing.assert_array_equal(
        read_ct_series(tmp_path / "packed").hu, read_ct_series(tmp_path / "ct").hu
    )
