"""The ``rtplan`` command: help, errors, atomic output folders, and end-to-end runs."""

from __future__ import annotations

import csv
import io
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import rtplan
from rtplan import cli
from rtplan._progress import Progress, as_progress
from rtplan.errors import RtplanError

SMALL_SPACING = ("5", "3", "3")  # coarse CT grid (mm) to keep the end-to-end runs fast


def run(argv, capsys):
    """main(argv) in-process: (exit status, stdout, stderr)."""
    code = cli.main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def assert_one_line_error(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, f"expected one error line, got:\n{err}"
    assert lines[0].startswith("rtplan: error: "), lines[0]
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], f"{needle!r} not in {lines[0]!r}"


def assert_nothing_left(parent: Path, name: str) -> None:
    """No output folder and no temporary sibling of it under ``parent``."""
    assert not (parent / name).exists()
    leftovers = [p.name for p in parent.iterdir() if p.name.startswith(f".{name}.")]
    assert leftovers == []


def _atlas_module():
    """rtplan.atlas, checked to ship the default atlas."""
    import rtplan.atlas as atlas_mod

    assert "male_pelvis_postop" in atlas_mod.list_atlases()
    return atlas_mod


def _needs_pipeline() -> None:
    """The whole pipeline imports (a broken module fails here rather than skipping)."""
    _atlas_module()
    import rtplan.compare
    import rtplan.dicom_io
    import rtplan.report
    import rtplan.staging
    import rtplan.volumes

    assert callable(rtplan.compare.compare_options)


# ---------------------------------------------------------------------------- help, version
@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["demo"],
        ["plan"],
        ["stage"],
        ["atlas"],
        ["atlas", "list"],
        ["atlas", "export"],
        ["atlas", "show"],
        ["protocol"],
        ["protocol", "list"],
        ["protocol", "diff"],
        ["cohort"],
        ["cohort", "run"],
        ["cohort", "simulate"],
        ["cohort", "report"],
        ["protocol", "show"],
        ["protocol", "validate"],
    ],
)
def test_help_of_every_command_exits_0(argv, capsys):
    code, out, err = run([*argv, "--help"], capsys)
    assert code == 0
    assert out.startswith("usage: rtplan")
    assert err == ""


def test_plan_help_explains_inputs_units_and_examples(capsys):
    _, out, _ = run(["plan", "--help"], capsys)
    for text in ("--ct DIR", "suv:4", "pct:41", "liver", "--lesion-rois", "mm", "examples:"):
        assert text in out


def test_version_in_process(capsys):
    code, out, _ = run(["--version"], capsys)
    assert code == 0
    assert out.strip() == f"rtplan {rtplan.__version__}"


def test_version_subprocess():
    """A real process: ``python -m rtplan --version`` (and the console script if installed)."""
    commands = [[sys.executable, "-m", "rtplan", "--version"]]
    script = shutil.which("rtplan")
    if script is not None:
        commands.append([script, "--version"])
    for command in commands:
        done = subprocess.run(command, capture_output=True, text=True, timeout=60)
        assert done.returncode == 0, done.stderr
        assert done.stdout.strip() == f"rtplan {rtplan.__version__}"


def test_subprocess_error_is_one_line_without_traceback(tmp_path):
    done = subprocess.run(
        [sys.executable, "-m", "rtplan", "protocol", "validate", str(tmp_path / "none.toml")],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 1
    assert_one_line_error(done.stderr, "none.toml")


# ---------------------------------------------------------------------------- usage errors
def test_usage_error_is_one_line_with_exit_2(capsys):
    code, _, err = run(["plan"], capsys)
    assert code == 2
    assert_one_line_error(err, "--ct", "--out")


def test_unknown_command_exit_2(capsys):
    code, _, err = run(["bogus"], capsys)
    assert code == 2
    assert_one_line_error(err, "bogus")


@pytest.mark.parametrize("spacing", [["0", "3", "3"], ["5", "3", "100"]])
def test_bad_spacing_is_refused(spacing, tmp_path, capsys):
    code, _, err = run(["demo", "--spacing", *spacing, "--out", tmp_path / "d"], capsys)
    assert code == 1
    assert_one_line_error(err, "--spacing")
    assert_nothing_left(tmp_path, "d")


def test_debug_adds_the_traceback(tmp_path, capsys):
    argv = ["protocol", "validate", tmp_path / "none.toml"]
    code, _, err = run(argv, capsys)
    assert code == 1 and "Traceback" not in err
    code, _, err = run([*argv, "--debug"], capsys)
    assert code == 1
    assert "Traceback" in err
    assert err.rstrip().splitlines()[-1].startswith("rtplan: error: ")


@pytest.mark.parametrize(("extra", "needle"), [(["--case", "T9"], "T9"), (["--jobs", "0"], "jobs")])
def test_demo_bad_arguments(extra, needle, tmp_path, capsys):
    code, _, err = run(["demo", *extra, "--out", tmp_path / "d"], capsys)
    assert code == 1
    assert_one_line_error(err, needle)
    assert_nothing_left(tmp_path, "d")


# ---------------------------------------------------------------------------- protocol
def test_protocol_list_show_validate(capsys):
    code, out, _ = run(["protocol", "list"], capsys)
    assert code == 0 and "nrg_salvage" in out
    code, out, _ = run(["protocol", "show", "nrg_salvage"], capsys)
    assert code == 0
    assert "ctv.pelvic_nodes.vessel_margin_mm" in out
    assert "Rectum V65Gy" in out  # a constraint line
    code, out, _ = run(["protocol", "validate"], capsys)
    assert code == 0 and "valid" in out


def test_protocol_show_toml_round_trips_an_edited_copy(tmp_path, capsys):
    from rtplan.protocol import load_protocol

    code, text, _ = run(["protocol", "show", "--toml", "nrg_salvage"], capsys)
    assert code == 0
    key = "ptv.sbrt.uniform"
    edited = text.replace(
        "[ptv.sbrt]\nuniform = { value = 5,", "[ptv.sbrt]\nuniform = { value = 3,", 1
    )
    assert edited != text, "the shipped SBRT PTV margin line was not found"
    path = tmp_path / "mine.toml"
    path.write_text(edited, encoding="utf-8")
    code, out, _ = run(["protocol", "validate", path], capsys)
    assert code == 0 and "valid" in out
    assert load_protocol(path).value(key) == 3 and load_protocol("nrg_salvage").value(key) == 5


def _protocol_with(tmp_path: Path, extra: str) -> Path:
    from importlib import resources

    text = resources.files("rtplan.protocols").joinpath("nrg_salvage.toml").read_text("utf-8")
    path = tmp_path / "my_protocol.toml"
    path.write_text(text + "\n" + extra + "\n", encoding="utf-8")
    return path


def test_protocol_validate_names_an_unknown_key(tmp_path, capsys):
    path = _protocol_with(tmp_path, '[ctv.node_margin_typo]\nvalue_mm = 5\nsource = "me"')
    code, _, err = run(["protocol", "validate", path], capsys)
    assert code == 1
    assert_one_line_error(err, "node_margin_typo")
    good = _protocol_with(tmp_path, "")
    code, out, _ = run(["protocol", "validate", good], capsys)
    assert code == 0 and "valid" in out


def test_plan_with_unknown_protocol_key_leaves_no_output(tmp_path, capsys):
    path = _protocol_with(tmp_path, '[ctv.node_margin_typo]\nvalue_mm = 5\nsource = "me"')
    ct = tmp_path / "ct"
    ct.mkdir()
    code, _, err = run(["plan", "--ct", ct, "--protocol", path, "--out", tmp_path / "o"], capsys)
    assert code == 1
    assert_one_line_error(err, "node_margin_typo")
    assert_nothing_left(tmp_path, "o")


# ------------------------------------------------------------------ plan/stage input errors
def test_missing_ct_folder(tmp_path, capsys):
    code, _, err = run(["plan", "--ct", tmp_path / "nope", "--out", tmp_path / "o"], capsys)
    assert code == 1
    assert_one_line_error(err, "--ct", "nope")
    assert_nothing_left(tmp_path, "o")


def test_non_dicom_ct_folder(tmp_path, capsys):
    _atlas_module()
    ct = tmp_path / "ct"
    ct.mkdir()
    (ct / "notes.txt").write_text("not DICOM")
    code, _, err = run(["plan", "--ct", ct, "--out", tmp_path / "o"], capsys)
    assert code == 1
    assert_one_line_error(err, str(ct.name))
    assert_nothing_left(tmp_path, "o")
    code, _, err = run(["stage", "--ct", ct], capsys)
    assert code == 1
    assert_one_line_error(err)


def test_existing_nonempty_out_is_refused_and_kept(tmp_path, capsys):
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    ct = tmp_path / "ct"
    ct.mkdir()
    code, _, err = run(["plan", "--ct", ct, "--out", out], capsys)
    assert code == 1
    assert_one_line_error(err, "--force", "not empty")
    assert (out / "keep.txt").read_text() == "mine"
    code, _, err = run(["demo", "--out", out], capsys)
    assert code == 1
    assert_one_line_error(err, "--force")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct", "o"]


def test_out_inside_an_input_folder_is_refused(tmp_path, capsys):
    ct = tmp_path / "ct"
    ct.mkdir()
    code, _, err = run(["plan", "--ct", ct, "--out", ct / "plan"], capsys)
    assert code == 1
    assert_one_line_error(err, "inside the input folder")
    assert list(ct.iterdir()) == []


def test_conflicting_lesion_options(tmp_path, capsys):
    ct = tmp_path / "ct"
    ct.mkdir()
    argv = ["stage", "--ct", ct, "--lesions", tmp_path / "m.nii.gz", "--lesions-from-pet", "suv:4"]
    code, _, err = run(argv, capsys)
    assert code == 1
    assert_one_line_error(err, "either --lesions or --lesions-from-pet")
    code, _, err = run(["stage", "--ct", ct, "--lesions-from-pet", "suv:4"], capsys)
    assert code == 1
    assert_one_line_error(err, "--pet")
    code, _, err = run(["stage", "--ct", ct, "--pet", ct, "--lesions-from-pet", "max:4"], capsys)
    assert code == 1
    assert_one_line_error(err, "max:4", "suv:<SUV>")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("suv:4", {"method": "fixed", "threshold_suv": 4.0}),
        ("SUV: 2.5", {"method": "fixed", "threshold_suv": 2.5}),
        ("pct:41", {"method": "percent_max", "percent": 41.0}),
        ("pct:50%", {"method": "percent_max", "percent": 50.0}),
        ("liver", {"method": "reference", "reference": "liver"}),
        ("blood", {"method": "reference", "reference": "blood_pool"}),
        (
            "liver:5.2",
            {"method": "reference", "reference": "liver", "references": {"liver": 5.2}},
        ),
    ],
)
def test_parse_pet_method(text, expected):
    assert cli.parse_pet_method(text) == expected


@pytest.mark.parametrize("text", ["suv", "suv:-1", "suv:x", "pct:0", "pct:100", "liver:0", "x:1"])
def test_parse_pet_method_rejects(text):
    with pytest.raises(ValueError, match="suv:<SUV>"):
        cli.parse_pet_method(text)


# ---------------------------------------------------------------------------- staged_output
def test_staged_output_renames_at_the_end(tmp_path):
    out = tmp_path / "o"
    with cli.staged_output(out) as tmp:
        assert tmp.parent == tmp_path and tmp != out
        (tmp / "a.txt").write_text("x")
        assert not out.exists()
    assert (out / "a.txt").read_text() == "x"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_staged_output_failure_leaves_nothing(tmp_path):
    with pytest.raises(RuntimeError), cli.staged_output(tmp_path / "o") as tmp:
        (tmp / "half.txt").write_text("x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_staged_output_force_replaces_only_on_success(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    (out / "old.txt").write_text("old")
    with pytest.raises(RtplanError, match="--force"), cli.staged_output(out):
        pass
    with pytest.raises(RuntimeError), cli.staged_output(out, force=True) as tmp:
        (tmp / "new.txt").write_text("new")
        raise RuntimeError("boom")
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    with cli.staged_output(out, force=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["new.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_staged_output_accepts_an_empty_existing_folder(tmp_path):
    out = tmp_path / "o"
    out.mkdir()
    with cli.staged_output(out) as tmp:
        (tmp / "a").write_text("1")
    assert (out / "a").exists()


def test_staged_output_refuses_a_file_and_overlapping_inputs(tmp_path):
    f = tmp_path / "file"
    f.write_text("x")
    with pytest.raises(RtplanError, match="not a folder"), cli.staged_output(f):
        pass
    data = tmp_path / "data"
    (data / "ct").mkdir(parents=True)
    with (
        pytest.raises(RtplanError, match="contains the input"),
        cli.staged_output(data, force=True, inputs=[data / "ct"]),
    ):
        pass
    with (
        pytest.raises(RtplanError, match="inside the input"),
        cli.staged_output(data / "ct" / "x", inputs=[data / "ct"]),
    ):
        pass
    # a file input: the output may be its sibling, but may not replace or contain it
    rs = data / "ct" / "RS.dcm"
    rs.write_text("x")
    with (
        pytest.raises(RtplanError, match="contains the input"),
        cli.staged_output(rs.parent, force=True, inputs=[rs]),
    ):
        pass
    with cli.staged_output(data / "ct" / "y", inputs=[rs]) as tmp:
        (tmp / "a").write_text("1")
    assert (data / "ct" / "y" / "a").exists() and rs.read_text() == "x"


# ---------------------------------------------------------------------------- progress
def test_progress_is_silent_off_a_terminal_and_times_steps():
    buf = io.StringIO()
    p = Progress(stream=buf)
    assert not p.enabled
    with p.step("outer"):
        p("inside")
        with p.step("inner"):
            pass
    assert buf.getvalue() == ""
    assert [name for name, _ in p.timings] == ["inner", "outer"]
    assert all(seconds >= 0 for _, seconds in p.timings)
    assert "outer" in p.summary()


def test_progress_shows_elapsed_time_when_enabled():
    buf = io.StringIO()
    p = Progress(enabled=True, stream=buf)
    with p.step("build"):
        p("half way", 1, "of", 2)
    lines = buf.getvalue().splitlines()
    assert len(lines) == 3
    assert lines[0].endswith("] build") and lines[0].startswith("[")
    assert lines[1].endswith("]   half way 1 of 2")  # indented inside the step
    assert "build: done in" in lines[2]


def test_progress_failed_step_is_timed_but_not_reported_done():
    buf = io.StringIO()
    p = Progress(enabled=True, stream=buf)
    with pytest.raises(ValueError), p.step("fails"):
        raise ValueError("x")
    assert "done" not in buf.getvalue()
    assert [name for name, _ in p.timings] == ["fails"]


def test_as_progress():
    seen = []
    p = as_progress(seen.append)
    with p.step("a"):
        p("b")
    assert seen[:2] == ["a", "  b"]
    assert len(seen) == 3 and seen[2].startswith("a: done in ")
    assert as_progress(False).enabled is False
    assert as_progress(True).enabled is True
    assert as_progress(p) is p


def test_quiet_run_writes_nothing_to_stderr(capsys):
    code, _, err = run(["protocol", "list", "--quiet"], capsys)
    assert code == 0 and err == ""


# ---------------------------------------------------------------------------- atlas
def test_atlas_list(capsys):
    _atlas_module()
    code, out, _ = run(["atlas", "list"], capsys)
    assert code == 0
    assert "male_pelvis_postop" in out.split()


def test_atlas_unknown_name(tmp_path, capsys):
    _atlas_module()
    code, _, err = run(["atlas", "export", "no_such_atlas", "--out", tmp_path / "a"], capsys)
    assert code == 1
    assert_one_line_error(err, "no_such_atlas")
    assert_nothing_left(tmp_path, "a")


def test_atlas_show_writes_pngs(tmp_path, capsys):
    _atlas_module()
    out = tmp_path / "views"
    code, stdout, err = run(["atlas", "show", "--spacing", *SMALL_SPACING, "--out", out], capsys)
    assert code == 0, err
    pngs = sorted(out.glob("*.png"))
    assert len(pngs) >= 3
    assert all(p.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" for p in pngs)
    assert all(str(out / p.name) in stdout for p in pngs)


# ---------------------------------------------------------------------------- end to end
def _nifti_from_labels(labels: np.ndarray, grid, path: Path) -> Path:
    """Write a label map on ``grid`` as NIfTI (RAS affine, [i, j, k] array)."""
    nib = pytest.importorskip("nibabel")
    affine_kji = grid.affine  # (k, j, i, 1) -> LPS
    affine_ijk = affine_kji[:, [2, 1, 0, 3]]
    affine_ras = np.diag([-1.0, -1.0, 1.0, 1.0]) @ affine_ijk
    data = np.ascontiguousarray(np.transpose(labels.astype(np.int16), (2, 1, 0)))
    nib.save(nib.Nifti1Image(data, affine_ras), str(path))
    return path


@pytest.fixture(scope="module")
def exported_atlas(tmp_path_factory):
    """The shipped atlas on a coarse grid, exported by ``rtplan atlas export``."""
    _needs_pipeline()
    folder = tmp_path_factory.mktemp("atlas") / "export"
    code = cli.main(["atlas", "export", "--spacing", *SMALL_SPACING, "--out", str(folder), "-q"])
    assert code == 0
    return folder


def test_atlas_export_reads_back(exported_atlas):
    from rtplan.dicom_io import read_ct_series, read_rtstruct

    ct = read_ct_series(exported_atlas / "ct")
    (rs,) = sorted(exported_atlas.glob("RS_*.dcm"))
    ss = read_rtstruct(rs, ct.grid)
    for name in ("Bladder", "Rectum", "A_Iliac_Ext_L", "ProstateBed"):
        assert name in ss and not ss[name].is_empty


def test_plan_and_stage_on_an_exported_atlas(exported_atlas, tmp_path, capsys):
    """``rtplan stage`` and ``rtplan plan`` on DICOM + a NIfTI lesion label map."""
    from rtplan.atlas import atlas_from_dicom
    from rtplan.demo import demo_cases
    from rtplan.dicom_io import read_rtdose, read_rtstruct

    ct_dir = exported_atlas / "ct"
    (rs,) = sorted(exported_atlas.glob("RS_*.dcm"))
    patient = atlas_from_dicom(ct_dir, rtstruct=rs)
    n1 = next(c for c in demo_cases(patient) if c.name == "N1M0")
    mask = _nifti_from_labels(n1.label_map, patient.grid, tmp_path / "lesions.nii.gz")

    code, out, err = run(
        ["stage", "--ct", ct_dir, "--structures", rs, "--lesions", mask, "-q"], capsys
    )
    assert code == 0, err
    assert "stage: T0N1M0" in out
    assert len([line for line in out.splitlines() if line.startswith("L")]) == 2
    assert "external iliac" in out.lower() or "EI" in out

    out_dir = tmp_path / "plan"
    argv = ["plan", "--ct", ct_dir, "--structures", rs, "--lesions", mask, "--out", out_dir]
    code, out, err = run([*argv, "--dose-spacing", "4", "-q"], capsys)
    assert code == 0, err
    files = sorted(p.name for p in out_dir.iterdir())
    assert "report.html" in files and "metrics.csv" in files and "metrics.json" in files
    rs_out = [f for f in files if f.startswith("RS_")]
    rd_out = [f for f in files if f.startswith("RD_")]
    assert len(rs_out) == 1 and rd_out
    # the RTSTRUCT refers to the input CT and holds the option targets
    ss = read_rtstruct(out_dir / rs_out[0], patient.grid)
    assert any(n.startswith("PTV") for n in ss.names)
    assert any(s.role == "gtv" for s in ss.values())
    for name in rd_out:
        dose, _ = read_rtdose(out_dir / name)
        assert float(np.max(dose)) > 40.0
    # a second run into the same folder needs --force; with it the folder is replaced
    code, _, err = run(argv, capsys)
    assert code == 1 and "--force" in err
    assert os.listdir(ct_dir)  # input untouched
    assert not any(p.name.startswith(".plan.") for p in tmp_path.iterdir())


@pytest.mark.parametrize("damage", ["not NIfTI", "truncated"])
def test_unreadable_nifti_lesion_mask_is_one_line_naming_the_file(
    exported_atlas, tmp_path, capsys, damage
):
    nib = pytest.importorskip("nibabel")
    ct_dir = exported_atlas / "ct"
    (rs,) = sorted(exported_atlas.glob("RS_*.dcm"))
    path = tmp_path / "lesions.nii.gz"
    if damage == "not NIfTI":
        path.write_bytes(b"not a NIfTI file " * 8)
    else:
        labels = np.random.default_rng(0).integers(0, 3, (30, 30, 30)).astype(np.int16)
        nib.save(nib.Nifti1Image(labels, np.eye(4)), str(path))
        path.write_bytes(path.read_bytes()[:-200])
    code, _, err = run(["stage", "--ct", ct_dir, "--structures", rs, "--lesions", path], capsys)
    assert code == 1
    assert_one_line_error(err, f"--lesions {path}: not a readable NIfTI file")


def test_lesion_table_text_lists_the_staged_lesions():
    from dataclasses import replace
    from types import SimpleNamespace

    from rtplan.grid import ImageGrid
    from rtplan.lesions import Lesions, lesions_from_mask
    from rtplan.staging import stage
    from rtplan.structures import StructureSet

    g = ImageGrid(shape=(10, 20, 20), spacing_mm=(2.5, 1.0, 1.0), origin_mm=(0, 0, 0))
    atlas = SimpleNamespace(grid=g, structures=StructureSet([], grid=g), landmarks={})
    no_lesion = stage(Lesions([], grid=g), atlas)
    assert cli.lesion_table_text(no_lesion) == "no PSMA-positive lesion"
    mask = np.zeros(g.shape, bool)
    mask[2:6, 4:12, 4:12] = True
    (lesion,) = lesions_from_mask(mask, g)
    staged = lesion.with_staging(category="N1", region="external iliac", side="L")
    text = cli.lesion_table_text(replace(no_lesion, lesions=Lesions([staged], grid=g)))
    header, row = text.splitlines()
    assert header.split() == [
        "lesion", "miTNM", "region", "side", "volume", "[cc]", "SUVmax", "miPSMA", "source"
    ]  # fmt: skip
    assert row.split()[:6] == ["L1", "N1", "external", "iliac", "L", "0.64"]


def test_stage_from_a_lesion_rtstruct(exported_atlas, tmp_path, capsys):
    """``--lesions RTSTRUCT``: ROIs of type GTV by default, or those named by --lesion-rois."""
    from rtplan.atlas import atlas_from_dicom
    from rtplan.demo import demo_cases
    from rtplan.dicom_io import write_rtstruct

    ct_dir = exported_atlas / "ct"
    (rs,) = sorted(exported_atlas.glob("RS_*.dcm"))
    patient = atlas_from_dicom(ct_dir, rtstruct=rs)
    m1b = next(c for c in demo_cases(patient) if c.name == "M1b")
    bladder = patient.structures["Bladder"]
    lesion_rs = write_rtstruct([*m1b.gtvs, bladder], ct_dir, tmp_path / "RS_lesions.dcm")
    base = ["stage", "--ct", ct_dir, "--structures", rs, "--lesions", lesion_rs, "-q"]
    code, out, err = run(base, capsys)
    assert code == 0, err
    assert "stage: T0N1M1b" in out
    code, out, err = run([*base, "--lesion-rois", m1b.gtvs[1].name], capsys)
    assert code == 0, err
    assert "stage: T0N1M0" in out  # only the node
    code, _, err = run([*base, "--lesion-rois", "GTV_nowhere"], capsys)
    assert code == 1
    assert_one_line_error(err, "GTV_nowhere")


def test_stage_from_pet(exported_atlas, tmp_path, capsys):
    """``--pet`` + ``--lesions-from-pet``: a PET series (Bq/mL) holding the M1b case's SUV."""
    from dicom_fixtures import write_pet

    from rtplan.atlas import atlas_from_dicom
    from rtplan.demo import demo_cases

    ct_dir = exported_atlas / "ct"
    (rs,) = sorted(exported_atlas.glob("RS_*.dcm"))
    patient = atlas_from_dicom(ct_dir, rtstruct=rs)
    m1b = next(c for c in demo_cases(patient) if c.name == "M1b")
    g = patient.grid
    # SUVbw = C * weight / decayed dose: 80 kg, 200 MBq, F-18-like half-life, 1 h later
    decayed_bq = 200e6 * 0.5 ** (3600.0 / 4062.6)
    activity = m1b.suv_image(g) * decayed_bq / 80e3
    write_pet(
        tmp_path / "pet",
        activity_bqml=activity,
        z0=g.origin_mm[2],
        slice_mm=g.spacing_mm[0],
        origin_xy=g.origin_mm[:2],
        pixel_spacing=g.spacing_mm[1:],
        for_uid=g.frame_of_reference_uid,
    )
    argv = ["stage", "--ct", ct_dir, "--structures", rs, "--pet", tmp_path / "pet"]
    code, out, err = run([*argv, "--lesions-from-pet", "suv:4", "-q"], capsys)
    assert code == 0, err
    assert "stage: T0N1M1b" in out
    lines = out.splitlines()
    header = next(line for line in lines if line.startswith("lesion"))
    rows = [line for line in lines if line.startswith("L")]
    assert [r.split()[1] for r in rows] == ["M1b", "N1"]  # by SUVmax: bone 12, node 6
    col = header.index("SUVmax")
    suv_max = [float(r[col:].split()[0]) for r in rows]
    assert suv_max == pytest.approx([12.0, 6.0], rel=0.02)


def test_demo_end_to_end_one_case(tmp_path, capsys):
    """``rtplan demo`` on a coarse grid, one case: files exist and read back."""
    _needs_pipeline()
    from rtplan.dicom_io import read_ct_series, read_rtdose, read_rtstruct

    out = tmp_path / "demo"
    argv = ["demo", "--spacing", *SMALL_SPACING, "--dose-spacing", "4", "--case", "TrN0M0"]
    argv += ["--out", out]
    code, stdout, err = run(argv, capsys)
    assert code == 0, err
    assert "TrN0M0" in stdout  # the summary
    case = out / "TrN0M0"
    assert sorted(p.name for p in out.iterdir()) == ["TrN0M0"]
    ct = read_ct_series(case / "ct")
    (rs,) = sorted(case.glob("RS_*.dcm"))
    ss = read_rtstruct(rs, ct.grid)
    rds = sorted(case.glob("RD_*.dcm"))
    with open(case / "metrics.csv", newline="", encoding="utf-8") as fh:
        header = next(csv.reader(fh))
    options = [p.name[3:-4] for p in rds]
    assert len(options) >= 2
    for option in options:
        assert option in header  # the options are the CSV's columns
        dose, dose_grid = read_rtdose(case / f"RD_{option}.dcm")
        assert dose.shape == dose_grid.shape and float(dose.max()) > 60.0
    # each option's PTVs are in the one RTSTRUCT
    ptvs = [n for n in ss.names if n.upper().startswith("PTV")]
    assert ptvs
    assert any(s.role == "gtv" for s in ss.values())
    assert (case / "report.html").stat().st_size > 1000
    assert (case / "metrics.json").stat().st_size > 100
    assert not any(p.name.startswith(".demo.") for p in tmp_path.iterdir())


# ---------------------------------------------------------------------------- imported doses
def test_plan_help_explains_imported_doses(capsys):
    _, out, _ = run(["plan", "--help"], capsys)
    for text in ("--dose OPTION=FILE", "OPTION/COURSE=FILE", "[imported]", "DoseSummationType"):
        assert text in out


@pytest.mark.parametrize("value", ["PBRT", "=RD.dcm", "PBRT="])
def test_bad_dose_syntax_is_a_usage_error(value, tmp_path, capsys):
    argv = ["plan", "--ct", tmp_path, "--out", tmp_path / "out", "--dose", value]
    code, _, err = run(argv, capsys)
    assert code == 2
    assert_one_line_error(err, "--dose", "OPTION=FILE")


def test_a_dose_given_twice_is_a_usage_error(tmp_path, capsys):
    argv = ["plan", "--ct", tmp_path, "--out", tmp_path / "out"]
    code, _, err = run([*argv, "--dose", "PBRT=a.dcm", "--dose", "PBRT=b.dcm"], capsys)
    assert code == 2
    assert_one_line_error(err, "--dose", "PBRT is given twice")


def test_a_missing_dose_file_is_an_input_error(exported_atlas, tmp_path, capsys):
    argv = ["plan", "--ct", exported_atlas / "ct", "--out", tmp_path / "out", "-q"]
    code, _, err = run([*argv, "--dose", f"PBRT={tmp_path / 'none.dcm'}"], capsys)
    assert code == 1
    assert_one_line_error(err, "--dose PBRT=", "none.dcm", "does not exist")
    assert_nothing_left(tmp_path, "out")


@pytest.fixture(scope="module")
def uniform_rtdose(exported_atlas, tmp_path_factory):
    """A uniform 50 Gy RTDOSE on the exported CT (its FrameOfReferenceUID), and a copy in
    another frame of reference."""
    import pydicom

    from rtplan.dicom_io import read_ct_series, write_rtdose

    folder = tmp_path_factory.mktemp("tps")
    ct = read_ct_series(exported_atlas / "ct", pixels=False)
    path = write_rtdose(np.full(ct.grid.shape, 50.0), ct.grid, folder / "RD_tps.dcm", ct_folder=ct)
    ds = pydicom.dcmread(path)
    ds.FrameOfReferenceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.save_as(folder / "RD_other_frame.dcm")
    return path, folder / "RD_other_frame.dcm", ct.grid.frame_of_reference_uid


def test_plan_with_an_imported_dose_end_to_end(exported_atlas, uniform_rtdose, tmp_path, capsys):
    """``--dose PBRT=RD.dcm``: an imported column beside the estimate, marked as such."""
    rd, _, _ = uniform_rtdose
    out_dir = tmp_path / "plan"
    (rs,) = sorted(exported_atlas.glob("RS_*.dcm"))
    argv = ["plan", "--ct", exported_atlas / "ct", "--structures", rs, "--out", out_dir]
    argv += ["--dose-spacing", "5"]
    code, _, err = run([*argv, "--dose", f"PBRT={rd}", "-q"], capsys)
    assert code == 0, err
    assert "rtplan: warning:" not in err  # the RTDOSE covers the whole CT
    with open(out_dir / "metrics.csv", newline="", encoding="utf-8") as fh:
        records = list(csv.DictReader(fh))
    assert records[0]["PBRT dose"] == "estimated"
    assert records[0]["PBRT [imported] dose"] == "imported: RD_tps.dcm"
    dmean = [r for r in records if r["metric"] == "Dmean" and r["PBRT [imported]"]]
    assert dmean and all(float(r["PBRT [imported]"]) == pytest.approx(50.0) for r in dmean)
    report = (out_dir / "report.html").read_text(encoding="utf-8")
    assert "PBRT [imported]" in report and "imported: RD_tps.dcm" in report
    assert "dose imported from RD_tps.dcm (PLAN), not checked by rtplan" in report
    # the imported dose is not written back as an rtplan estimate
    assert not [p for p in out_dir.iterdir() if "imported" in p.name]
    assert (out_dir / "RD_PBRT.dcm").exists()


def test_plan_refuses_a_dose_of_another_frame_or_option(
    exported_atlas, uniform_rtdose, tmp_path, capsys
):
    rd, other, ct_uid = uniform_rtdose
    (rs,) = sorted(exported_atlas.glob("RS_*.dcm"))
    argv = ["plan", "--ct", exported_atlas / "ct", "--structures", rs, "--dose-spacing", "5", "-q"]
    code, _, err = run([*argv, "--out", tmp_path / "a", "--dose", f"PBRT={other}"], capsys)
    assert code == 1
    assert_one_line_error(err, "RD_other_frame.dcm", "1.2.826.0.1.3680043.8.498.1", ct_uid)
    assert_nothing_left(tmp_path, "a")
    code, _, err = run([*argv, "--out", tmp_path / "b", "--dose", f"NOPE={rd}"], capsys)
    assert code == 1
    assert_one_line_error(err, "'NOPE'", "no such option", "PBRT")
    assert_nothing_left(tmp_path, "b")
