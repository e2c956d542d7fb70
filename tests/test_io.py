"""The atomic-write helpers every rtplan writer uses: one file, or a whole output folder."""

import os
from pathlib import Path

import pytest

from rtplan._io import atomic_path, atomic_write_text, staged_output
from rtplan.errors import RtplanError


def test_text_is_written_with_umask_permissions(tmp_path):
    old = os.umask(0o022)
    try:
        path = atomic_write_text(tmp_path / "a.txt", "hello")
    finally:
        os.umask(old)
    assert path.read_text() == "hello"
    assert (path.stat().st_mode & 0o777) == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_failure_leaves_the_old_file_and_no_temporary(tmp_path):
    path = tmp_path / "a.txt"
    path.write_text("old")
    with pytest.raises(RuntimeError), atomic_path(path) as tmp:
        tmp.write_text("half")
        raise RuntimeError("writer failed")
    assert path.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.txt"]


def test_a_folder_is_renamed_into_place_or_removed(tmp_path):
    dest = tmp_path / "ct"
    with atomic_path(dest) as tmp:
        tmp.mkdir()
        (tmp / "CT_0001.dcm").write_bytes(b"x")
    assert (dest / "CT_0001.dcm").read_bytes() == b"x"
    other = tmp_path / "ct2"
    with pytest.raises(OSError), atomic_path(other) as tmp:
        tmp.mkdir()
        (tmp / "CT_0001.dcm").write_bytes(b"x")
        raise OSError("disk full")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ct"]


# ---------------------------------------------------------------------------- staged_output
def test_staged_output_lives_here_and_the_cli_re_exports_it():
    from rtplan import cli

    assert cli.staged_output is staged_output
    assert "staged_output" in cli.__all__


def test_staged_output_puts_the_old_folder_back_when_the_final_rename_fails(tmp_path, monkeypatch):
    out = tmp_path / "o"
    out.mkdir()
    (out / "old.txt").write_text("old")
    real_replace = os.replace
    calls = []

    def replace(src, dst):
        calls.append((Path(src).name, Path(dst).name))
        if len(calls) == 2:  # the new folder onto ``out``, after the old one moved aside
            raise OSError("rename failed")
        real_replace(src, dst)

    monkeypatch.setattr(os, "replace", replace)
    with pytest.raises(OSError, match="rename failed"), staged_output(out, force=True) as tmp:
        (tmp / "new.txt").write_text("new")
    assert [p.name for p in out.iterdir()] == ["old.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]
    assert calls[0][1].startswith(".o.old-") and calls[2][0].startswith(".o.old-")


# ---------------------------------------------------------------------------- hostile runs
def _dead_pid() -> int:
    """The id of a process that has ended (and was reaped)."""
    import subprocess
    import sys

    done = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], check=True,
                          capture_output=True, text=True)  # fmt: skip
    return int(done.stdout)


def _partial(parent: Path, name: str, pid: int, host: str | None = None) -> Path:
    """A temporary output folder as a run of process ``pid`` leaves it when killed."""
    import socket

    folder = parent / f".{name}.partial-{pid}-abcd1234"
    folder.mkdir()
    (folder / "half.dcm").write_bytes(b"x")
    (folder / ".rtplan-run").write_text(f"{host or socket.gethostname()}\n{pid}\n")
    return folder


def test_partial_folders_of_dead_runs_are_removed_by_the_next_run(tmp_path):
    from rtplan.errors import RtplanWarning

    dead = _dead_pid()
    stale = _partial(tmp_path, "other", dead)
    alive = _partial(tmp_path, "other", os.getpid())
    elsewhere = _partial(tmp_path, "third", dead, host="another-host")
    unmarked = tmp_path / f".fourth.partial-{dead}-abcd1234"
    unmarked.mkdir()
    with pytest.warns(RtplanWarning, match=f"process {dead}"), staged_output(tmp_path / "o") as tmp:
        (tmp / "a").write_text("1")
    assert not stale.exists()
    assert alive.exists() and elsewhere.exists() and unmarked.exists()  # not ours to judge
    assert (tmp_path / "o" / "a").exists()
    assert not (tmp_path / "o" / ".rtplan-run").exists()


def test_the_old_folder_of_a_run_killed_while_replacing_is_put_back(tmp_path):
    from rtplan.errors import RtplanWarning

    dead = _dead_pid()
    old = tmp_path / f".o.old-{dead}-abcd1234"
    old.mkdir()
    (old / "previous.txt").write_text("previous")
    with pytest.warns(RtplanWarning, match="put back"), staged_output(tmp_path / "p"):
        pass
    assert (tmp_path / "o" / "previous.txt").read_text() == "previous"  # back in place
    old.mkdir()  # a run killed after its new folder was in place: the old one goes
    with pytest.warns(RtplanWarning, match="removed the replaced"), staged_output(tmp_path / "q"):
        pass
    assert not old.exists() and (tmp_path / "o" / "previous.txt").exists()


def test_staged_output_failure_removes_the_parents_it_created(tmp_path):
    (tmp_path / "a").mkdir()
    with pytest.raises(RuntimeError), staged_output(tmp_path / "a" / "b" / "c" / "o"):
        raise RuntimeError("boom")
    assert [p.name for p in tmp_path.iterdir()] == ["a"]  # it existed before
    assert list((tmp_path / "a").iterdir()) == []


def test_temporary_names_are_shortened_to_fit_name_max(tmp_path):
    from rtplan._io import name_max

    limit = name_max(tmp_path)
    long_file = tmp_path / ("f" * (limit - 4) + ".txt")
    atomic_write_text(long_file, "x")
    assert long_file.read_text() == "x"
    out = tmp_path / ("d" * limit)
    with staged_output(out) as tmp:
        assert len(os.fsencode(tmp.name)) <= limit
        (tmp / "a").write_text("1")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([long_file.name, out.name])


def test_a_write_error_names_the_file_not_the_writer(tmp_path):
    import errno

    def full(path):
        try:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        except OSError as exc:  # a library re-raising with its own text and no errno
            raise OSError(f"With tag (7fe0,0010) got exception: {exc}\nTraceback ...") from exc

    with pytest.raises(OSError) as info, atomic_path(tmp_path / "RD.dcm") as tmp:
        full(tmp)
    assert info.value.errno == errno.ENOSPC
    assert info.value.filename == str(tmp_path / "RD.dcm")
    assert "Traceback" not in str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_a_folder_put_back_is_not_overwritten_by_the_run_that_found_it(tmp_path):
    from rtplan.errors import RtplanWarning

    old = tmp_path / f".o.old-{_dead_pid()}-abcd1234"
    old.mkdir()
    (old / "previous.txt").write_text("previous")
    with (
        pytest.warns(RtplanWarning, match="put back"),
        pytest.raises(RtplanError, match="not empty"),
        staged_output(tmp_path / "o"),
    ):
        pass
    assert (tmp_path / "o" / "previous.txt").read_text() == "previous"


def test_staged_output_folder_follows_the_umask(tmp_path):
    """mkdtemp gives 0700; a finished output folder gets the mode of any new folder."""
    import os
    import stat

    from rtplan._io import staged_output

    old = os.umask(0o027)
    try:
        with staged_output(tmp_path / "out") as tmp:
            (tmp / "a.txt").write_text("a")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "out").stat().st_mode) == 0o750
