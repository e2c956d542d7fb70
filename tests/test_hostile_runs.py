"""Hostile conditions around a run (issue 13): concurrent runs, broken file systems and
pipes, over-long names, memory, signals, debris, and messages that name CLI options.

Every case is a small run: the coarse atlas (5 x 3 x 3 mm) or a command that stops early.
Signal tests start a real ``rtplan`` process and kill it.
"""

from __future__ import annotations

import errno
import gzip
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_cli import SMALL_SPACING, assert_nothing_left, assert_one_line_error, run

from rtplan import cli
from rtplan._io import staged_output
from rtplan.errors import DicomInputError, OutputExistsError, RtplanError, RtplanWarning

#: The coarsest grid (mm) on which the shipped atlas is still valid: for runs that must finish.
_TINY = ("10", "6", "6")
#: Text that must never reach the user in a one-line error.
_TRACEBACK_TEXT = ("Traceback", "With tag", "got exception", 'File "', "internal error")


def _rtplan(*args: object) -> list[str]:
    return [sys.executable, "-m", "rtplan", *(str(a) for a in args)]


def _no_traceback(err: str) -> None:
    for text in _TRACEBACK_TEXT:
        assert text not in err, f"{text!r} in stderr:\n{err}"


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The shipped atlas on the coarsest grid, exported: (CT folder, RTSTRUCT)."""
    folder = tmp_path_factory.mktemp("hostile") / "export"
    code = cli.main(["atlas", "export", "--spacing", *_TINY, "--out", str(folder), "-q"])
    assert code == 0
    (rs,) = sorted(folder.glob("RS_*.dcm"))
    return folder / "ct", rs


# ============================================================================ 1. same --out
def test_a_second_run_to_the_same_out_fails_and_keeps_the_first(tmp_path):
    """Two runs check ``out`` before either finishes: the one that finishes last fails."""
    out = tmp_path / "o"
    with pytest.raises(OutputExistsError, match="another run"):
        with staged_output(out) as late:
            (late / "late.txt").write_text("late")
            with staged_output(out) as early:
                (early / "early.txt").write_text("early")
            assert [p.name for p in out.iterdir()] == ["early.txt"]
    assert [p.name for p in out.iterdir()] == ["early.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]


def test_cli_run_whose_out_was_written_meanwhile_fails_with_exit_1(tmp_path, monkeypatch, capsys):
    out = tmp_path / "export"
    real = cli.write_rtstruct_with_points

    def rtstruct_and_a_rival(*args, **kwargs):
        out.mkdir()
        (out / "rival.txt").write_text("rival")  # another run finished first
        return real(*args, **kwargs)

    monkeypatch.setattr(cli, "write_rtstruct_with_points", rtstruct_and_a_rival)
    code, _, err = run(["atlas", "export", "--spacing", *_TINY, "--out", out], capsys)
    assert code == 1
    assert_one_line_error(err, "another run", str(out.name))
    assert [p.name for p in out.iterdir()] == ["rival.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export"]


# ============================================================================ 2. one-line errors
@pytest.mark.parametrize("damage", ["truncated gzip", "not gzip", "gzip of garbage"])
def test_corrupt_label_map_is_one_line_naming_the_file(exported, tmp_path, damage, capsys):
    nib = pytest.importorskip("nibabel")
    ct, _ = exported
    labels = tmp_path / "labels"
    labels.mkdir()
    path = labels / "rectum.nii.gz"
    if damage == "truncated gzip":
        data = np.zeros((20, 20, 10), np.uint8)
        data[5:10, 5:10, 3:6] = 1
        nib.save(nib.Nifti1Image(data, np.diag([3.0, 3.0, 5.0, 1.0])), str(path))
        path.write_bytes(path.read_bytes()[:-60])
    elif damage == "not gzip":
        path.write_bytes(b"garbage" * 10)
    else:
        path.write_bytes(gzip.compress(b"x" * 400))
    code, _, err = run(["stage", "--ct", ct, "--labels", labels], capsys)
    assert code == 1
    assert_one_line_error(err, "rectum.nii.gz")
    _no_traceback(err)


def _raise_for(target: Path, code: int, real):
    """A stand-in for an os function that fails with ``code`` for paths under ``target``'s
    parent whose name starts with ``target``'s or its temporary sibling's."""

    def fake(*args, **kwargs):
        names = [Path(a).name for a in args[:2] if isinstance(a, (str, os.PathLike))]
        if any(n.startswith((target.name, f".{target.name}")) for n in names):
            raise OSError(code, os.strerror(code), str(args[0]))
        return real(*args, **kwargs)

    return fake


@pytest.mark.parametrize("code_", [errno.EROFS, errno.EACCES, errno.EDQUOT])
def test_unwritable_output_folder_is_one_line(tmp_path, monkeypatch, code_, capsys):
    out = tmp_path / "views"
    monkeypatch.setattr(os, "mkdir", _raise_for(out, code_, os.mkdir))
    code, _, err = run(["atlas", "show", "--spacing", *_TINY, "--out", out], capsys)
    assert code == 1
    assert_one_line_error(err, os.strerror(code_), "views")
    assert list(tmp_path.iterdir()) == []


def test_read_only_at_the_final_rename_is_one_line_and_leaves_nothing(
    tmp_path, monkeypatch, capsys
):
    out = tmp_path / "export"
    monkeypatch.setattr(os, "rename", _raise_for(out, errno.EROFS, os.rename))
    monkeypatch.setattr(os, "replace", _raise_for(out, errno.EROFS, os.replace))
    code, _, err = run(["atlas", "export", "--spacing", *_TINY, "--out", out], capsys)
    assert code == 1
    assert_one_line_error(err, "Read-only file system", "export")
    assert_nothing_left(tmp_path, "export")


def test_stdout_on_dev_full_is_one_line_error():
    with open(os.devnull if not Path("/dev/full").exists() else "/dev/full", "w") as full:
        done = subprocess.run(
            _rtplan("protocol", "list"), stdout=full, stderr=subprocess.PIPE, text=True, timeout=60
        )
    assert done.returncode == 1
    assert_one_line_error(done.stderr, "standard output", "No space left on device")


def test_closed_pipe_exits_quietly_like_a_unix_tool():
    """``rtplan protocol show | head -0``: no traceback, the status of a tool killed by SIGPIPE.

    (20 kB: the pipe fails inside a print; a short output fails at the final flush, as
    standard output on /dev/full does in the test above.)
    """
    command = ["protocol", "show", "nrg_salvage"]
    proc = subprocess.Popen(_rtplan(*command), stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.close()  # the reader is gone before the first write
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 128 + signal.SIGPIPE
    assert err == ""


def test_pipe_into_head_prints_no_traceback():
    done = subprocess.run(
        ["bash", "-c", " ".join(_rtplan("protocol", "list")) + " | head -1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0 and done.stdout.count("\n") == 1
    assert done.stderr == ""


class _FullDisk:
    """A file whose writes fail with ENOSPC after ``room`` bytes."""

    def __init__(self, fh, room: int = 600) -> None:
        self._fh = fh
        self._room = room

    def write(self, data) -> int:
        self._room -= len(data)
        if self._room < 0:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._fh.write(data)

    def __getattr__(self, name):
        return getattr(self._fh, name)


def test_disk_full_while_writing_dicom_is_one_line_without_pydicom_text(
    tmp_path, monkeypatch, capsys
):
    import pydicom.filewriter as filewriter
    from pydicom.filebase import DicomFileLike

    def full_file(name, mode):
        return DicomFileLike(_FullDisk(open(name, mode)))

    monkeypatch.setattr(filewriter, "DicomFile", full_file)
    out = tmp_path / "export"
    code, _, err = run(["atlas", "export", "--spacing", *_TINY, "--out", out], capsys)
    assert code == 1
    assert_one_line_error(err, "No space left on device", "export")
    _no_traceback(err)
    assert_nothing_left(tmp_path, "export")


def test_out_name_over_name_max_is_refused_before_any_work(tmp_path, capsys):
    long = "a" * 300
    for out in (tmp_path / long, tmp_path / long / "c"):
        code, _, err = run(["atlas", "export", "--out", out], capsys)
        assert code == 1
        assert_one_line_error(err, "300 bytes", "255")
        assert list(tmp_path.iterdir()) == []


def test_out_name_near_name_max_works_with_a_short_temporary_name(tmp_path, capsys):
    out = tmp_path / ("b" * 250)
    code, _, err = run(["atlas", "export", "--spacing", *_TINY, "--out", out], capsys)
    assert code == 0, err
    assert sorted(p.name for p in tmp_path.iterdir()) == [out.name]
    assert any(out.glob("RS_*.dcm"))


def test_case_label_over_name_max_is_refused_before_any_work(
    exported, tmp_path, monkeypatch, capsys
):
    def never(*args, **kwargs):
        raise AssertionError("the CT was read")

    monkeypatch.setattr(cli, "atlas_from_dicom", never)
    ct, rs = exported
    argv = ["plan", "--ct", ct, "--structures", rs, "--case", "c" * 300, "--out", tmp_path / "o"]
    code, _, err = run(argv, capsys)
    assert code == 1
    assert_one_line_error(err, "--case", "300 bytes")
    assert_nothing_left(tmp_path, "o")


def test_memory_error_is_a_one_line_input_error(tmp_path, monkeypatch, capsys):
    def no_memory(*args, **kwargs):
        raise MemoryError("Unable to allocate 9.3 GiB for an array")

    monkeypatch.setattr(cli, "load_atlas", no_memory)
    code, _, err = run(["atlas", "export", "--out", tmp_path / "a"], capsys)
    assert code == 1
    assert_one_line_error(err, "out of memory", "9.3 GiB")
    assert_nothing_left(tmp_path, "a")


# ============================================================================ 3. memory
def _address_space(limit_bytes: int):
    def set_limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (limit_bytes, limit_bytes))

    return set_limit


@pytest.mark.parametrize(
    "argv",
    [
        ["atlas", "export", "--spacing", "0.5", "0.5", "0.5"],
        ["demo", "--spacing", "0.2", "0.2", "0.2"],
        ["plan", "--dose-spacing", "0.5"],
    ],
    ids=["atlas-export", "demo", "plan"],
)
def test_runs_beyond_the_memory_are_refused_with_the_figure(exported, tmp_path, argv):
    """Under a 3 GB address-space limit: refused at once, the need in GB in the message."""
    ct, rs = exported
    if argv[0] == "plan":
        argv = [*argv, "--ct", ct, "--structures", rs]
    t0 = time.perf_counter()
    done = subprocess.run(
        _rtplan(*argv, "--out", tmp_path / "o"),
        capture_output=True,
        text=True,
        timeout=300,
        preexec_fn=_address_space(3 * 1024**3),
    )
    assert done.returncode == 1, done.stderr
    assert_one_line_error(done.stderr, "memory", "GB")
    assert re.search(r"needs about [\d.]+ GB", done.stderr)
    assert time.perf_counter() - t0 < 60
    assert_nothing_left(tmp_path, "o")


def test_plan_case_refuses_a_dose_grid_beyond_the_limit(coarse_atlas, monkeypatch):
    from rtplan._memory import MemoryLimitError
    from rtplan.demo import plan_case
    from rtplan.lesions import Lesions

    monkeypatch.setenv("RTPLAN_MEMORY_LIMIT", "20M")
    with pytest.raises(MemoryLimitError, match=r"needs about [\d.]+ MB.*RTPLAN_MEMORY_LIMIT"):
        plan_case(coarse_atlas, Lesions([], grid=coarse_atlas.grid), dose_spacing_mm=5.0)


def test_run_demo_refuses_before_building_the_atlas(tmp_path, monkeypatch):
    import rtplan.demo as demo_mod
    from rtplan._memory import MemoryLimitError

    def never(*args, **kwargs):
        raise AssertionError("the atlas was built")

    monkeypatch.setattr(demo_mod, "load_atlas", never)
    with pytest.raises(MemoryLimitError, match="GB"):
        demo_mod.run_demo(tmp_path / "d", spacing_mm=(0.2, 0.2, 0.2), progress=False)
    assert list(tmp_path.iterdir()) == []


def test_memory_limit_variable_must_be_a_size(monkeypatch):
    from rtplan._memory import available_bytes

    monkeypatch.setenv("RTPLAN_MEMORY_LIMIT", "lots")
    with pytest.raises(RtplanError, match="RTPLAN_MEMORY_LIMIT"):
        available_bytes()
    monkeypatch.setenv("RTPLAN_MEMORY_LIMIT", "1.5G")
    assert available_bytes().bytes <= 1.5 * 1024**3


def test_the_estimate_bounds_the_measured_peak(coarse_atlas):
    """The factors of rtplan._memory against tracemalloc on a small plan (within 3x)."""
    import tracemalloc

    from rtplan._memory import plan_bytes
    from rtplan.demo import case_lesions, demo_cases, plan_case
    from rtplan.dose_estimate import make_dose_grid

    case = next(c for c in demo_cases(coarse_atlas) if c.name == "M1b")
    lesions = case_lesions(case, coarse_atlas)
    tracemalloc.start()
    try:
        comparison = plan_case(coarse_atlas, lesions, dose_spacing_mm=5.0)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    body = coarse_atlas.structures["Body"]
    dose_grid = make_dose_grid(coarse_atlas.grid, spacing_mm=5.0, body=body)
    estimate = plan_bytes(
        int(np.prod(coarse_atlas.grid.shape)),
        int(np.prod(dose_grid.shape)),
        len(comparison.options),
    )
    assert peak <= estimate <= 3 * peak


def test_shipped_atlas_shape_is_known_before_building(coarse_atlas):
    from rtplan._memory import shipped_atlas_grid
    from rtplan.atlas import load_atlas

    shape, spacing = shipped_atlas_grid("male_pelvis_postop", (5.0, 3.0, 3.0))
    assert shape == coarse_atlas.grid.shape and spacing == coarse_atlas.grid.spacing_mm
    default = load_atlas("male_pelvis_postop", validate=False).grid  # the demo's default grid
    shape, spacing = shipped_atlas_grid("male_pelvis_postop", None)
    assert shape == default.shape
    assert spacing == pytest.approx(default.spacing_mm)


# ============================================================================ 4. nothing left
def _wait_for(condition, timeout_s: float, what: str) -> None:
    t_end = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > t_end:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def _partials(parent: Path, name: str) -> list[Path]:
    return [p for p in parent.iterdir() if p.name.startswith(f".{name}.")]


def _children(pid: int) -> list[int]:
    """Process ids whose parent is ``pid`` (Linux /proc)."""
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2 :].split()
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def _alive(pid: int) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    return text[text.rindex(")") + 2] != "Z"


_DEMO_FAST = ["demo", "--spacing", *SMALL_SPACING, "--dose-spacing", "5"]


@pytest.mark.skipif(sys.platform != "linux", reason="signals and /proc")
def test_sigterm_is_handled_like_ctrl_c(tmp_path):
    out = tmp_path / "d"
    proc = subprocess.Popen(
        _rtplan(*_DEMO_FAST, "--case", "TrN0M0", "--jobs", "1", "--out", out),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        _wait_for(lambda: bool(_partials(tmp_path, "d")), 60, "the partial folder")
        time.sleep(0.2)
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert proc.returncode == 128 + signal.SIGTERM, err
    assert err.strip() == "rtplan: terminated"
    assert list(tmp_path.iterdir()) == []


@pytest.mark.skipif(sys.platform != "linux", reason="signals and /proc")
def test_killed_demo_takes_its_workers_and_the_next_run_cleans_up(tmp_path):
    out = tmp_path / "d"
    proc = subprocess.Popen(
        _rtplan(*_DEMO_FAST, "--case", "N1M0", "--case", "M1b", "--jobs", "2", "--out", out),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
    )
    workers: list[int] = []
    try:
        _wait_for(lambda: len(_children(proc.pid)) >= 2, 60, "two workers")
        workers = _children(proc.pid)
        proc.kill()
        proc.wait(timeout=10)
        _wait_for(lambda: not any(_alive(w) for w in workers), 10, "the workers to die")
        err = proc.stderr.read() if proc.stderr is not None else ""
    finally:
        for pid in workers:  # the workers this test started, if the fix did not stop them
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)
        proc.kill()
    assert "Traceback" not in err and "BrokenPipeError" not in err, err
    (stale,) = _partials(tmp_path, "d")
    with pytest.warns(RtplanWarning, match=re.escape(stale.name)):
        with staged_output(tmp_path / "next") as tmp:
            (tmp / "a").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["next"]


def test_failing_run_removes_the_parent_folders_it_created(tmp_path, capsys):
    code, _, err = run(["atlas", "export", "no_such_atlas", "--out", tmp_path / "a/b/c"], capsys)
    assert code == 1
    assert_one_line_error(err, "no_such_atlas")
    assert list(tmp_path.iterdir()) == []


# ============================================================================ 5. messages
def test_fatal_error_does_not_say_skipped(monkeypatch, tmp_path, capsys):
    def fatal(*args, **kwargs):
        raise DicomInputError("RS.dcm: ROI 'Rectum' has an OPEN_PLANAR contour; skipped")

    monkeypatch.setattr(cli, "atlas_from_dicom", fatal)
    ct = tmp_path / "ct"
    ct.mkdir()
    code, _, err = run(["stage", "--ct", ct], capsys)
    assert code == 1
    assert_one_line_error(err, "OPEN_PLANAR")
    assert not err.rstrip().endswith("skipped")


def test_rtstruct_of_another_frame_is_not_a_skipped_fatal_error(exported, tmp_path, capsys):
    import pydicom

    ct, rs = exported
    ds = pydicom.dcmread(rs)
    ds.StructureSetROISequence[0].ReferencedFrameOfReferenceUID = "1.2.3.4"
    other = tmp_path / "RS_other.dcm"
    ds.save_as(other, enforce_file_format=True)
    code, _, err = run(["stage", "--ct", ct, "--structures", other, "-q"], capsys)
    assert code == 0 or not err.rstrip().endswith("skipped"), err


def _second_series(ct: Path, folder: Path) -> str:
    """Copy the CT series into ``folder`` twice, the copy as a new series; its UID."""
    import pydicom
    from pydicom.uid import generate_uid

    shutil.copytree(ct, folder)
    uid = generate_uid()
    for f in sorted(ct.iterdir()):
        ds = pydicom.dcmread(f)
        ds.SeriesInstanceUID = uid
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        ds.save_as(folder / f"copy_{f.name}", enforce_file_format=True)
    return uid


def test_several_ct_series_name_the_cli_option(exported, tmp_path, capsys):
    ct, rs = exported
    uid = _second_series(ct, tmp_path / "both")
    code, _, err = run(["stage", "--ct", tmp_path / "both", "--structures", rs], capsys)
    assert code == 1
    assert_one_line_error(err, "--series-uid")
    assert "series_uid=" not in err
    argv = ["stage", "--ct", tmp_path / "both", "--structures", rs, "--series-uid", uid, "-q"]
    code, out, err = run(argv, capsys)
    assert code == 0, err
    assert "stage: T0N0M0" in out


def _flat_pet(folder: Path, ct: Path, **kwargs) -> Path:
    from dicom_fixtures import write_pet

    from rtplan.dicom_io import read_ct_series

    g = read_ct_series(ct, pixels=False).grid
    write_pet(
        folder,
        activity_bqml=np.full(g.shape, 1000.0),
        z0=g.origin_mm[2],
        slice_mm=g.spacing_mm[0],
        origin_xy=g.origin_mm[:2],
        pixel_spacing=g.spacing_mm[1:],
        for_uid=g.frame_of_reference_uid,
        **kwargs,
    )
    return folder


@pytest.mark.parametrize(
    ("missing", "option", "value"),
    [("weight_kg", "--patient-weight", "80"), ("dose_bq", "--injected-dose", "200")],
)
def test_missing_suv_tag_names_the_cli_option_and_the_option_works(
    exported, tmp_path, missing, option, value, capsys
):
    ct, rs = exported
    pet = _flat_pet(tmp_path / "pet", ct, **{missing: None})
    base = ["stage", "--ct", ct, "--structures", rs, "--pet", pet, "-q"]
    code, _, err = run(base, capsys)
    assert code == 1
    assert_one_line_error(err, option)
    assert "_kg=" not in err and "_bq=" not in err
    code, out, err = run([*base, option, value], capsys)
    assert code == 0, err
    assert "stage: T0N0M0" in out


def test_several_pet_series_name_the_cli_option(exported, tmp_path, capsys):
    import pydicom

    ct, rs = exported
    pet = _flat_pet(tmp_path / "pet", ct)
    _flat_pet(tmp_path / "pet" / "other", ct)
    uid = str(pydicom.dcmread(sorted((tmp_path / "pet" / "other").iterdir())[0]).SeriesInstanceUID)
    base = ["stage", "--ct", ct, "--structures", rs, "--pet", pet, "-q"]
    code, _, err = run(base, capsys)
    assert code == 1
    assert_one_line_error(err, "--pet-series-uid")
    assert "series_uid=" not in err
    code, out, err = run([*base, "--pet-series-uid", uid], capsys)
    assert code == 0, err
    assert "stage: T0N0M0" in out
