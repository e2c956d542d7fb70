"""Hostile input never becomes a plan (issue 13, the input half): one test per case.

Each case was accepted (a plan or stage from garbage), crashed ("internal error", exit 3)
or hung on the code before this module was written. The cases run through the API on
small grids, and through ``rtplan.cli.main`` (as tests/test_cli.py does) where the
command line is what the user meets.
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pydicom
import pytest
from dicom_fixtures import write_ct, write_pet, write_rtstruct_fixture

from rtplan import cli
from rtplan.dicom_io import read_ct_series, read_pet_suv, read_rtstruct, write_rtstruct
from rtplan.errors import (
    DicomInputError,
    GridMismatchError,
    InvalidInputError,
    InvalidMaskError,
    ProtocolError,
    RtplanWarning,
)
from rtplan.grid import ImageGrid
from rtplan.lesions import lesions_from_mask, lesions_from_pet, lesions_from_structures
from rtplan.protocol import load_protocol, protocol_text
from rtplan.structures import Structure

# SUVbw of the fixtures: 80 kg, 200 MBq, Ga-68 half-life, scanned 1 h after injection
_DECAYED_BQ = 200e6 * 0.5 ** (3600.0 / 4062.6)
_BQML_PER_SUV = _DECAYED_BQ / 80e3


def run(argv) -> tuple[int, str, str]:
    """``rtplan.cli.main(argv)`` in-process: (exit status, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main([str(a) for a in argv])
    return code, out.getvalue(), err.getvalue()


def one_line_error(err: str) -> str:
    """The single ``rtplan: error:`` line of ``err`` (warning lines aside)."""
    lines = [
        line for line in err.splitlines() if line.strip() and not line.startswith("rtplan: warn")
    ]
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    assert lines[0].startswith("rtplan: error: "), lines[0]
    assert "Traceback" not in err
    return lines[0]


# ---------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def patient(tmp_path_factory):
    """The shipped atlas exported on a coarse grid: (ct folder, RTSTRUCT, Atlas, M1b case)."""
    from rtplan.atlas import atlas_from_dicom
    from rtplan.demo import demo_cases

    folder = tmp_path_factory.mktemp("atlas") / "export"
    code, _, err = run(["atlas", "export", "--spacing", "5", "3", "3", "--out", folder, "-q"])
    assert code == 0, err
    ct_dir = folder / "ct"
    (rs,) = sorted(folder.glob("RS_*.dcm"))
    atlas = atlas_from_dicom(ct_dir, rtstruct=rs)
    m1b = next(c for c in demo_cases(atlas) if c.name == "M1b")
    return ct_dir, rs, atlas, m1b


def _patient_pet(folder: Path, patient, suv=None, *, shift_mm=(0.0, 0.0, 0.0), **kwargs) -> Path:
    """A PET series on the patient's CT grid holding ``suv`` (default: the M1b case's)."""
    _, _, atlas, m1b = patient
    g = atlas.grid
    suv = m1b.suv_image(g) if suv is None else suv
    write_pet(
        folder,
        activity_bqml=np.asarray(suv, float) * _BQML_PER_SUV,
        z0=g.origin_mm[2] + shift_mm[2],
        slice_mm=g.spacing_mm[0],
        origin_xy=(g.origin_mm[0] + shift_mm[0], g.origin_mm[1] + shift_mm[1]),
        pixel_spacing=g.spacing_mm[1:],
        for_uid=g.frame_of_reference_uid,
        **kwargs,
    )
    return folder


def _stage(patient, *extra) -> tuple[int, str, str]:
    ct_dir, rs, _, _ = patient
    return run(["stage", "--ct", ct_dir, "--structures", rs, "-q", *extra])


#: A small PET (5 x 6 x 6 voxels of 4 mm) and a CT grid inside it.
def _small_pet(folder: Path, activity=None, **kwargs) -> dict:
    if activity is None:
        activity = np.random.default_rng(3).uniform(1000.0, 20000.0, (5, 6, 6))
    return write_pet(folder, activity_bqml=activity, **kwargs)


def _ct_grid_in_pet(for_uid: str, shape=(4, 8, 8)) -> ImageGrid:
    return ImageGrid(
        shape=shape,
        spacing_mm=(2.0, 1.5, 1.5),
        origin_mm=(0.0, 0.0, 4.0),
        frame_of_reference_uid=for_uid,
    )


def _edit_series(folder: Path, **tags) -> None:
    """Set DICOM attributes in every file of ``folder`` (invalid values allowed)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # pydicom: "NaN" is not a valid DS
        for f in sorted(folder.iterdir()):
            ds = pydicom.dcmread(f)
            for key, value in tags.items():
                setattr(ds, key, value)
            ds.save_as(f)


# ============================================================== 1. PET that does not cover the CT
def test_pet_shifted_2_m_is_refused_with_the_overlap_cli(tmp_path, patient):
    """Before: exit 0, "T0N0M0" (SUV 0 everywhere). After: exit 1 naming the overlap."""
    pet = _patient_pet(tmp_path / "pet", patient, shift_mm=(0.0, 0.0, 2000.0))
    code, out, err = _stage(patient, "--pet", pet, "--lesions-from-pet", "suv:4")
    assert code == 1, out
    line = one_line_error(err)
    assert "covers 0.0 %" in line and "PET" in line and "z" in line


def test_pet_must_cover_the_required_region(tmp_path):
    info = _small_pet(tmp_path / "pet", decay="ADMIN")
    # PET voxel edges: x, y -10..14 mm, z -2..18 mm; this CT reaches x = 28.5 mm
    ct_grid = _ct_grid_in_pet(info["for_uid"], shape=(4, 8, 20))
    with pytest.raises(GridMismatchError, match=r"covers \d+\.\d %.*x \["):
        read_pet_suv(tmp_path / "pet", ct_grid)
    body = np.zeros(ct_grid.shape, bool)
    body[:, :, :8] = True  # x < 12 mm: inside the PET
    suv, grid = read_pet_suv(tmp_path / "pet", ct_grid, require_cover=body)
    assert grid is ct_grid and np.all(suv[body] > 0)
    half_out = body.copy()
    half_out[:, :, 8:16] = True
    with pytest.raises(GridMismatchError, match="of the required region"):
        read_pet_suv(tmp_path / "pet", ct_grid, require_cover=half_out)
    shifted = ImageGrid(
        shape=(4, 8, 8),
        spacing_mm=(2.0, 1.5, 1.5),
        origin_mm=(0.0, 0.0, 2004.0),
        frame_of_reference_uid=info["for_uid"],
    )
    with pytest.raises(GridMismatchError, match=r"covers 0\.0 %"):
        read_pet_suv(tmp_path / "pet", shifted)


# ============================================================== 2. absurd SUVs and rescale
def test_gml_holding_bq_per_ml_is_refused(tmp_path):
    """Units GML (SUV already) with Bq/mL values: SUVmax 20000. Before: read as SUV."""
    _small_pet(tmp_path / "pet", units="GML")
    with pytest.raises(DicomInputError, match=r"SUVmax .* implausible.*Units"):
        read_pet_suv(tmp_path / "pet")


def test_patient_weight_1e9_kg_is_refused(tmp_path):
    _small_pet(tmp_path / "pet", weight_kg=1e9)
    with pytest.raises(
        DicomInputError, match=r"PatientWeight.*1e\+09.*fix the tag.*patient_weight_kg="
    ):
        read_pet_suv(tmp_path / "pet")
    with pytest.raises(InvalidInputError, match="patient_weight_kg"):
        read_pet_suv(tmp_path / "pet", patient_weight_kg=1e9)
    read_pet_suv(tmp_path / "pet", patient_weight_kg=80.0)  # the way out


def test_patient_weight_1e9_kg_is_refused_cli(tmp_path, patient):
    """Before: exit 0, a pelvic "node" of SUVmax 1.5e8."""
    pet = _patient_pet(tmp_path / "pet", patient, weight_kg=1e9)
    code, out, err = _stage(patient, "--pet", pet, "--lesions-from-pet", "suv:4")
    assert code == 1, out
    assert "PatientWeight" in one_line_error(err)


def test_uniformly_hot_pet_is_not_one_lesion_cli(tmp_path, patient):
    """Before: exit 0, the whole Body one N1 "node". After: refused, naming the fraction."""
    _, _, atlas, _ = patient
    pet = _patient_pet(tmp_path / "pet", patient, suv=np.full(atlas.grid.shape, 5.0))
    code, out, err = _stage(patient, "--pet", pet, "--lesions-from-pet", "suv:4")
    assert code == 1, out
    line = one_line_error(err)
    assert "% of the" in line and "lesion" in line


def test_threshold_1e_300_is_not_one_lesion_cli(tmp_path, patient):
    pet = _patient_pet(tmp_path / "pet", patient)
    code, out, err = _stage(patient, "--pet", pet, "--lesions-from-pet", "suv:1e-300")
    assert code == 1, out
    assert "% of the" in one_line_error(err)


def test_lesion_suv_max_implausible_is_refused(mgrid_small):
    m = np.zeros(mgrid_small.shape, bool)
    m[2:4, 3:6, 3:6] = True
    suv = np.full(mgrid_small.shape, 1.5e8)
    with pytest.raises(InvalidInputError, match=r"SUVmax 1\.5e\+08.*implausible"):
        lesions_from_mask(m, mgrid_small, suv=suv)
    with pytest.raises(InvalidInputError, match="implausible"):
        lesions_from_pet(suv, mgrid_small, method="fixed", threshold_suv=4.0)


@pytest.fixture
def mgrid_small() -> ImageGrid:
    return ImageGrid(shape=(10, 20, 20), spacing_mm=(3.0, 2.0, 2.0), origin_mm=(0.0, 0.0, 0.0))


@pytest.mark.parametrize("slope", ["0", "-1", "NaN", "inf"])
def test_pet_rescale_slope_zero_negative_or_nan_is_refused(tmp_path, slope):
    """Before: 0 read as 1, -1 gave negative SUV, NaN gave NaN SUV."""
    _small_pet(tmp_path / "pet")
    _edit_series(tmp_path / "pet", RescaleSlope=slope)
    with pytest.raises(DicomInputError, match=r"RescaleSlope \(0028,1053\)"):
        read_pet_suv(tmp_path / "pet")


@pytest.mark.parametrize("slope", ["0", "-1", "NaN", "1e38"])
def test_ct_rescale_slope_zero_negative_nan_or_overflowing_is_refused(tmp_path, slope):
    """Before: a CT of garbage HU (1 for 0, NaN, inf) read and planned on."""
    write_ct(tmp_path / "ct")
    _edit_series(tmp_path / "ct", RescaleSlope=slope)
    with pytest.raises(DicomInputError, match=r"RescaleSlope \(0028,1053\)"):
        read_ct_series(tmp_path / "ct")


def test_ct_rescale_slope_nan_is_refused_cli(tmp_path, patient):
    ct_dir, rs, _, _ = patient
    ct = tmp_path / "ct"
    shutil.copytree(ct_dir, ct)
    _edit_series(ct, RescaleSlope="NaN")
    code, out, err = run(["stage", "--ct", ct, "--structures", rs, "-q"])
    assert code == 1, out
    assert "RescaleSlope" in one_line_error(err)


def test_large_lesion_warns_and_keeps_a_note():
    g = ImageGrid(shape=(40, 60, 60), spacing_mm=(5.0, 4.0, 4.0), origin_mm=(0.0, 0.0, 0.0))
    m = np.zeros(g.shape, bool)
    m[5:15, 10:30, 10:30] = True  # 10 x 20 x 20 voxels of 80 mm3: 320 cc
    with pytest.warns(RtplanWarning, match=r"L1.*320 cc"):
        (lesion,) = lesions_from_mask(m, g)
    assert any("cc" in n and "large" in n for n in lesion.notes)


# ============================================================== 3. lesions outside the Body
def _body_and_air_lesion(g: ImageGrid) -> tuple[np.ndarray, np.ndarray]:
    body = np.zeros(g.shape, bool)
    body[:, 5:15, 5:15] = True
    lesion = np.zeros(g.shape, bool)
    lesion[4:6, 8:10, 8:10] = True  # inside
    lesion[4:6, 0:2, 0:2] = True  # in the air
    return body, lesion


def test_lesion_component_in_the_air_is_refused(mgrid_small):
    """Before: staged as an N1 node. After: refused, naming the component."""
    body, lesion = _body_and_air_lesion(mgrid_small)
    with pytest.raises(InvalidMaskError, match=r"outside the Body.*mask component"):
        lesions_from_mask(lesion, mgrid_small, body=body)
    (inside,) = lesions_from_mask(lesion & body, mgrid_small, body=body)
    assert inside.volume_cc > 0
    ss = [Structure("GTV_air", lesion & ~body, mgrid_small, role="gtv")]
    with pytest.raises(InvalidMaskError, match="GTV_air"):
        lesions_from_structures(ss, body=body)


def test_lesion_component_in_the_air_is_refused_cli(tmp_path, patient):
    _, _, atlas, _ = patient
    g = atlas.grid
    body = atlas.structures["Body"].mask
    air = np.zeros(g.shape, bool)
    air[g.shape[0] // 2, 1:3, 1:3] = True
    assert not (air & body).any()
    path = _nifti(air, g, tmp_path / "air.nii.gz")
    code, out, err = _stage(patient, "--lesions", path)
    assert code == 1, out
    assert "outside the Body" in one_line_error(err)


def _nifti(labels: np.ndarray, grid: ImageGrid, path: Path) -> Path:
    nib = pytest.importorskip("nibabel")
    affine = np.diag([-1.0, -1.0, 1.0, 1.0]) @ grid.affine[:, [2, 1, 0, 3]]
    data = np.ascontiguousarray(np.transpose(labels.astype(np.int16), (2, 1, 0)))
    nib.save(nib.Nifti1Image(data, affine), str(path))
    return path


def test_all_true_mask_is_refused_as_a_lesion(mgrid_small):
    every = np.ones(mgrid_small.shape, bool)
    with pytest.raises(InvalidMaskError, match=r"100 % of the grid"):
        lesions_from_mask(every, mgrid_small)
    body, _ = _body_and_air_lesion(mgrid_small)
    with pytest.raises(InvalidMaskError, match=r"100 % of the Body"):
        lesions_from_mask(body, mgrid_small, body=body)


def test_all_true_mask_is_refused_cli(tmp_path, patient):
    """Before: exit 0, the whole grid one pelvic node."""
    _, _, atlas, _ = patient
    path = _nifti(np.ones(atlas.grid.shape, bool), atlas.grid, tmp_path / "all.nii.gz")
    code, out, err = _stage(patient, "--lesions", path)
    assert code == 1, out
    assert "100 % of the" in one_line_error(err)  # of the Body (of the grid without one)


# ============================================================== 4. protocols
def _protocol_file(tmp_path: Path, old: str, new: str) -> Path:
    text = protocol_text("nrg_salvage")
    assert old in text
    path = tmp_path / "mine.toml"
    path.write_text(text.replace(old, new, 1), encoding="utf-8")
    return path


def test_constraint_on_an_unknown_structure_is_refused_with_a_suggestion(tmp_path):
    """Before: `protocol validate` said valid; the constraint vanished at plan time."""
    path = _protocol_file(tmp_path, 'structure = "Rectum"', 'structure = "Rectun"')
    with pytest.raises(ProtocolError, match=r"'Rectun'.*did you mean 'Rectum'"):
        load_protocol(path)
    code, out, err = run(["protocol", "validate", path])
    assert code == 1, out
    assert "Rectun" in one_line_error(err)


def test_fractions_2_to_the_70_is_refused(tmp_path):
    path = _protocol_file(tmp_path, "fractions = 37", f"fractions = {2**70}")
    with pytest.raises(ProtocolError, match=r"prescription\.prostate_bed\.fractions.*between 1"):
        load_protocol(path)


def test_deeply_nested_protocol_is_a_one_line_error(tmp_path):
    """Before: exit 3, "internal error: RecursionError"."""
    path = tmp_path / "deep.toml"
    path.write_text("x = " + "[" * 5000 + "]" * 5000 + "\n", encoding="utf-8")
    with pytest.raises(ProtocolError, match="nested"):
        load_protocol(path)
    code, _, err = run(["protocol", "validate", path])
    assert code == 1
    assert "deep.toml" in one_line_error(err)


def test_protocol_that_is_not_utf8_names_the_file(tmp_path):
    path = tmp_path / "latin1.toml"
    path.write_bytes(protocol_text("nrg_salvage").encode("utf-8") + b"\n# caf\xe9\n")
    with pytest.raises(ProtocolError, match=r"latin1\.toml.*UTF-8"):
        load_protocol(path)


# ============================================================== 5. DICOM reading
_SQUARE = [(-5.0, -15.0), (-1.0, -15.0), (-1.0, -10.0), (-5.0, -10.0)]


@pytest.fixture(scope="module")
def small_ct(tmp_path_factory):
    """A 6 x 8 x 10 CT series (tests/dicom_fixtures.py) and its grid."""
    folder = tmp_path_factory.mktemp("small") / "ct"
    info = write_ct(folder)
    return folder, info["for_uid"], read_ct_series(folder).grid


def _rtstruct(path: Path, small_ct, rois=None, edit=None) -> Path:
    rois = rois or [{"name": "Rectum", "number": 1, "contours": [(10.0, _SQUARE)]}]
    write_rtstruct_fixture(path, rois, for_uid=small_ct[1])
    if edit is not None:
        ds = pydicom.dcmread(path)
        edit(ds)
        ds.save_as(path)
    return path


def _drop(seq: str, keyword: str):
    return lambda ds: delattr(ds[seq][0], keyword)


@pytest.mark.parametrize(
    ("edit", "tag"),
    [
        (_drop("StructureSetROISequence", "ROINumber"), "ROINumber (3006,0022)"),
        (_drop("ROIContourSequence", "ReferencedROINumber"), "ReferencedROINumber (3006,0084)"),
        (
            _drop("RTROIObservationsSequence", "ReferencedROINumber"),
            "ReferencedROINumber (3006,0084)",
        ),
    ],
    ids=["ROINumber", "contour ReferencedROINumber", "observation ReferencedROINumber"],
)
def test_rtstruct_missing_roi_number_names_file_and_tag(tmp_path, small_ct, edit, tag):
    """Before: AttributeError, "internal error" (exit 3)."""
    path = _rtstruct(tmp_path / "rs.dcm", small_ct, edit=edit)
    with pytest.raises(DicomInputError, match=rf"{path.name}.*{re.escape(tag)}"):
        read_rtstruct(path, small_ct[2])


def test_truncated_rtstruct_names_the_file(tmp_path, small_ct):
    path = _rtstruct(tmp_path / "rs.dcm", small_ct)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DicomInputError, match=path.name):
        read_rtstruct(path, small_ct[2])


def test_pet_half_life_of_a_millisecond_is_refused(tmp_path, patient):
    """Before: ZeroDivisionError, "internal error" (exit 3)."""
    _small_pet(tmp_path / "small", half_life_s=0.001)
    with pytest.raises(DicomInputError, match=r"RadionuclideHalfLife.*0\.001 s.*half_life_s="):
        read_pet_suv(tmp_path / "small")
    pet = _patient_pet(tmp_path / "pet", patient, half_life_s=0.001)
    code, _, err = _stage(patient, "--pet", pet, "--lesions-from-pet", "suv:4")
    assert code == 1
    assert "RadionuclideHalfLife" in one_line_error(err)


_READER = textwrap.dedent(
    """
    import sys
    from rtplan.dicom_io import read_ct_series, read_rtstruct
    from rtplan.errors import DicomInputError
    ct = read_ct_series(sys.argv[1])
    print(ct.grid.shape[0])
    try:
        read_rtstruct(sys.argv[2], ct.grid)
    except DicomInputError as exc:
        print(exc)
    """
)


def test_special_files_are_not_read(tmp_path, small_ct):
    """Before: a FIFO hung, /dev/zero spun, /dev/urandom was read without end (the CT
    folder), and a FIFO given as the RTSTRUCT hung. Run in a child process killed after
    30 s. After: skipped with a warning naming each, or refused."""
    folder = tmp_path / "ct"
    shutil.copytree(small_ct[0], folder)
    os.mkfifo(folder / "pipe.dcm")
    os.symlink("/dev/zero", folder / "zero.dcm")
    os.symlink("/dev/urandom", folder / "urandom.dcm")
    os.mkfifo(tmp_path / "rs.dcm")
    try:
        done = subprocess.run(
            [
                sys.executable,
                "-W",
                "ignore::UserWarning:pydicom",
                "-c",
                _READER,
                folder,
                tmp_path / "rs.dcm",
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("reading a folder holding a FIFO and device links did not finish in 30 s")
    assert done.returncode == 0, done.stderr
    shape, error = done.stdout.splitlines()
    assert shape == "6" and "rs.dcm: not a regular file" in error
    for name, kind in (("pipe", "a FIFO"), ("zero", "a character device"), ("urandom", "a char")):
        assert f"{name}.dcm is {kind}" in done.stderr


def test_nan_contour_data_names_the_roi_and_tag(tmp_path, small_ct):
    """Before: "cannot convert float NaN to integer" (exit 3)."""

    def nan(ds):
        ds.ROIContourSequence[0].ContourSequence[0].ContourData = ["NaN"] * 12

    with pytest.warns(UserWarning):  # pydicom: NaN is not a valid DS
        path = _rtstruct(tmp_path / "rs.dcm", small_ct, edit=nan)
    with pytest.raises(DicomInputError, match=r"'Rectum'.*ContourData \(3006,0050\).*finite"):
        read_rtstruct(path, small_ct[2])


@pytest.mark.parametrize(
    ("keyword", "value"),
    [("PixelSpacing", ["NaN", "1"]), ("ImagePositionPatient", ["NaN", "0", "0"])],
)
def test_nan_geometry_tag_names_the_tag(tmp_path, small_ct, keyword, value):
    """Before: misleading messages ("[nan, 1.0] differs from [nan, 1.0]")."""
    folder = tmp_path / "ct"
    shutil.copytree(small_ct[0], folder)
    first = sorted(folder.iterdir())[0]
    ds = pydicom.dcmread(first)
    with pytest.warns(UserWarning):
        setattr(ds, keyword, value)
    ds.save_as(first)
    with pytest.raises(DicomInputError, match=rf"{first.name}: tag {keyword} .*not a finite"):
        read_ct_series(folder)


@pytest.mark.filterwarnings("ignore::UserWarning:pydicom")
def test_nan_display_colour_is_a_warning_not_a_crash(tmp_path, small_ct):
    """Before: ValueError "invalid literal for int()" (exit 3)."""
    path = _rtstruct(tmp_path / "rs.dcm", small_ct)
    path.write_bytes(path.read_bytes().replace(b"10\\20\\30", b"NaN\\2\\30"))
    with pytest.warns(RtplanWarning, match=r"'Rectum'.*ROIDisplayColor"):
        ss = read_rtstruct(path, small_ct[2])
    assert not ss["Rectum"].is_empty


def test_one_open_planar_contour_does_not_abort_the_read(tmp_path, small_ct):
    """Before: DicomInputError for the whole file. After: that contour skipped, warned."""
    rois = [
        {"name": "Rectum", "number": 1, "contours": [(10.0, _SQUARE)]},
        {"name": "Line", "number": 2, "contours": [(10.0, _SQUARE[:2], "OPEN_PLANAR")]},
    ]
    path = _rtstruct(tmp_path / "rs.dcm", small_ct, rois=rois)
    with pytest.warns(RtplanWarning, match=r"'Line'.*OPEN_PLANAR.*skipped"):
        ss = read_rtstruct(path, small_ct[2])
    assert not ss["Rectum"].is_empty and ss["Line"].is_empty


@pytest.mark.filterwarnings("ignore::UserWarning:pydicom")
def test_roi_name_over_64_characters_is_reported_when_read(tmp_path, small_ct):
    """Before: read silently; the run failed only when writing the output RTSTRUCT."""
    long_name = "Rectum_" + "x" * 63
    rois = [{"name": long_name, "number": 1, "contours": [(10.0, _SQUARE)]}]
    with pytest.warns(UserWarning):  # pydicom: longer than a LO holds
        path = _rtstruct(tmp_path / "rs.dcm", small_ct, rois=rois)
    with pytest.warns(RtplanWarning, match=r"70 characters.*64"):
        ss = read_rtstruct(path, small_ct[2], map_names=False)
    (name,) = ss.names
    assert name == long_name[:64]
    out = write_rtstruct(ss, small_ct[0], tmp_path / "out" / "rs.dcm")
    assert out.is_file()


@pytest.mark.parametrize(
    ("points", "needle"),
    [
        ([(x + 5000.0, y) for x, y in _SQUARE], "outside the image"),
        ([(-5.0, -15.0), (-5.0, -15.0), (-5.0, -15.0)], "degenerate"),
    ],
    ids=["far outside", "degenerate"],
)
def test_absurd_contours_are_reported(tmp_path, small_ct, points, needle):
    """Before: dropped silently (an empty ROI)."""
    rois = [{"name": "Odd", "number": 1, "contours": [(10.0, points)]}]
    path = _rtstruct(tmp_path / "rs.dcm", small_ct, rois=rois)
    with pytest.warns(RtplanWarning, match=rf"'Odd'.*{needle}"):
        read_rtstruct(path, small_ct[2])


def test_single_valued_corrected_image_attn_is_accepted(tmp_path):
    """Before: "CorrectedImage ['A', 'T', 'T', 'N'] lacks ATTN": a valid PET refused."""
    _small_pet(tmp_path / "pet")
    _edit_series(tmp_path / "pet", CorrectedImage="ATTN")
    suv, _ = read_pet_suv(tmp_path / "pet")
    assert suv.max() > 0
    _edit_series(tmp_path / "pet", CorrectedImage="DECY")
    with pytest.raises(DicomInputError, match=r"\['DECY'\] lacks ATTN"):
        read_pet_suv(tmp_path / "pet")


def test_hints_name_the_api_argument(tmp_path):
    """Hints say what to pass and where (API argument; the tag to fix)."""
    _small_pet(tmp_path / "pet", weight_kg=None)
    with pytest.raises(DicomInputError, match=r"fix the tag.*patient_weight_kg="):
        read_pet_suv(tmp_path / "pet")
    _small_pet(tmp_path / "pet2")
    _small_pet(tmp_path / "pet2" / "again")
    with pytest.raises(DicomInputError, match=r"series_uid="):
        read_pet_suv(tmp_path / "pet2")


def test_fatal_errors_do_not_say_skipped(tmp_path, small_ct):
    """Before: "...outside the grid's slices; skipped" raised as an error."""
    rois = [{"name": "High", "number": 1, "contours": [(400.0, _SQUARE)]}]
    path = _rtstruct(tmp_path / "rs.dcm", small_ct, rois=rois)
    with pytest.raises(DicomInputError, match="outside the grid's slices") as err:
        read_rtstruct(path, small_ct[2])
    assert "skipped" not in str(err.value)
    with pytest.warns(RtplanWarning, match="outside the grid's slices; contour skipped"):
        read_rtstruct(path, small_ct[2], on_invalid="warn")
