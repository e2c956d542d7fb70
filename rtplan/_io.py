"""Atomic output: write beside the destination, then rename (private module).

Every writer of rtplan goes through :func:`atomic_path`, so a failure never leaves a
half-written file, and outputs get the permissions the umask gives any new file (unlike
:func:`tempfile.mkstemp`, which creates 0600 files). Whole output folders (a demo run, a
``rtplan plan --out``) go through :func:`staged_output`, which refuses to overwrite or
write into the inputs.
"""

from __future__ import annotations

import os
import secrets
import shutil
import tempfile
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rtplan.errors import RtplanError

__all__: list[str] = []


def _temporary_name(path: Path, suffix: str) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}{suffix}")


@contextmanager
def atomic_path(path: str | Path, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a new temporary path beside ``path``; rename it onto ``path`` on success.

    The caller writes the temporary path (a file through any writer that opens it by
    name, or a folder it creates there). On an exception the temporary file or folder is
    removed and the exception propagates; ``path`` is left as it was.

    Parameters
    ----------
    path : str or Path
        Final destination (its folder must exist).
    suffix : str
        Ending of the temporary name (e.g. ``".png"`` where the writer infers the format).
    """
    final = Path(path)
    tmp = _temporary_name(final, suffix)
    try:
        yield tmp
        os.replace(tmp, final)
    except BaseException:
        if tmp.is_dir():
            for f in tmp.iterdir():
                f.unlink(missing_ok=True)
            tmp.rmdir()
        else:
            tmp.unlink(missing_ok=True)
        raise


def atomic_write_text(path: str | Path, text: str) -> Path:
    """Write UTF-8 ``text`` to ``path`` atomically; return the path."""
    with atomic_path(path) as tmp, open(tmp, "x", encoding="utf-8") as fh:
        fh.write(text)
    return Path(path)


def _is_within(path: Path, folder: Path) -> bool:
    """Whether ``path`` is ``folder`` or lies below it (both resolved)."""
    try:
        path.relative_to(folder)
    except ValueError:
        return False
    return True


def _resolved(path: str | os.PathLike[str]) -> Path:
    return Path(path).expanduser().resolve()


def _check_output_folder(
    out: str | os.PathLike[str],
    target: Path,
    *,
    force: bool,
    inputs: Iterable[str | os.PathLike[str] | None],
) -> None:
    """Raise :class:`RtplanError` unless ``target`` may become the output folder."""
    if target.exists() and not target.is_dir():
        raise RtplanError(f"output {str(out)!r} exists and is not a folder")
    if target.is_dir() and any(target.iterdir()) and not force:
        raise RtplanError(
            f"output folder {str(out)!r} exists and is not empty; use --force to replace it"
        )
    for item in inputs:
        if item is None:
            continue
        src = _resolved(item)
        if src.is_dir() and _is_within(target, src):
            raise RtplanError(
                f"output folder {str(out)!r} is inside the input folder {str(item)!r}; "
                "choose an --out outside the inputs"
            )
        if _is_within(src, target):
            raise RtplanError(
                f"output folder {str(out)!r} contains the input {str(item)!r}; choose another --out"
            )


def _move_into_place(tmp: Path, target: Path) -> None:
    """Rename the finished folder ``tmp`` onto ``target``, replacing an existing one.

    An existing ``target`` is first renamed aside and put back if the final rename fails;
    it is deleted only once the new folder is in place.
    """
    if not target.exists():
        os.replace(tmp, target)
        return
    old = target.parent / f".{target.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


@contextmanager
def staged_output(
    out: str | os.PathLike[str],
    *,
    force: bool = False,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
) -> Iterator[Path]:
    """Write an output folder all at once: into a temporary sibling, renamed at the end.

    Parameters
    ----------
    out : path
        The output folder to create. It must not exist, or be an empty folder, unless
        ``force`` is given (then it is replaced, after the new one is complete).
    force : bool
        Replace an existing non-empty ``out``.
    inputs : iterable of path
        Input files and folders of the run (``None`` entries are skipped): ``out`` may
        neither lie inside an input folder (never write into an input folder) nor be or
        contain an input (``force`` would delete it).

    Yields
    ------
    Path
        The temporary folder to write into (same parent as ``out``, so the final rename
        is atomic on one file system). If the block raises, the temporary folder is
        removed and ``out`` is left as it was.

    Raises
    ------
    RtplanError
        If ``out`` is a file, a non-empty folder without ``force``, or overlaps an input.

    Examples
    --------
    >>> import tempfile
    >>> parent = Path(tempfile.mkdtemp())
    >>> with staged_output(parent / "run") as tmp:
    ...     _ = (tmp / "a.txt").write_text("x")
    >>> sorted(p.name for p in (parent / "run").iterdir())
    ['a.txt']
    >>> shutil.rmtree(parent)
    """
    target = _resolved(out)
    _check_output_folder(out, target, force=force, inputs=inputs)
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        yield tmp
        _move_into_place(tmp, target)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
