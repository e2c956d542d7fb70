"""The one atomic-write helper every rtplan writer uses."""

import os

import pytest

from rtplan._io import atomic_path, atomic_write_text


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
