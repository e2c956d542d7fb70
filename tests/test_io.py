"""The atomic-write helpers every rtplan writer uses: one file, or a whole output folder."""

import os
from pathlib import Path

import pytest

from rtplan._io import atomic_path, atomic_write_text, staged_output


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
