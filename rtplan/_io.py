"""Atomic output: write beside the destination, then rename (private module).

Every writer of rtplan goes through :func:`atomic_path`, so a failure never leaves a
half-written file, and outputs get the permissions the umask gives any new file (unlike
:func:`tempfile.mkstemp`, which creates 0600 files). Whole output folders (a demo run, a
``rtplan plan --out``) go through :func:`staged_output`, which refuses to overwrite or
write into the inputs.

How an output folder ``out`` is written (:func:`staged_output`):

* Into a temporary sibling ``.<name>.partial-<pid>-<random>`` holding a marker file
  (``.rtplan-run``: host name and process id), renamed onto ``out`` at the end. ``<name>``
  is shortened (its start and a hash) when the temporary name would pass the file system's
  NAME_MAX; an ``out`` whose own name is longer than NAME_MAX is refused at once.
* Two runs to the same ``out``: without ``force`` the final step is a plain
  :func:`os.rename`, which the kernel refuses onto a non-empty folder. The run that
  finishes second fails (:class:`~rtplan.errors.OutputExistsError`) and the first run's
  output stays; the check is the rename itself, so there is no window between a check and
  the write (no lock file). With ``force`` the last run to finish wins: the existing folder
  is renamed aside to ``.<name>.old-<pid>-<random>``, the new one renamed into place and
  the old one deleted.
* A run that fails (an exception, Ctrl-C, SIGTERM as the ``rtplan`` command handles it)
  removes its temporary folder and the parent folders it created.
* A run killed outright (SIGKILL, power loss) leaves its temporary folder behind. The next
  run into the same parent folder removes the temporary folders whose process is dead
  (written on this host, pid recorded in the name and the marker) and says so with an
  :class:`~rtplan.errors.RtplanWarning`; an ``.old-`` folder of a dead run is put back
  where it was moved from when that folder is missing (the run died between its two
  renames), and removed otherwise (the run died after putting its output in place).
  Folders of live processes, of other hosts, or without a marker are left alone.
* Write errors of the file system (no space, quota, read-only, file too large) are raised
  as :class:`OSError` naming ``out`` (or, from :func:`atomic_path`, the file), whatever
  the writer underneath made of the message.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import shutil
import socket
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

from rtplan.errors import InvalidInputError, OutputExistsError, RtplanError, RtplanWarning

__all__: list[str] = []

#: NAME_MAX when the file system does not say (POSIX file systems on Linux and macOS).
_DEFAULT_NAME_MAX = 255
#: The marker file in a temporary output folder: the host and process writing it.
_MARKER = ".rtplan-run"
#: Temporary siblings of an output folder (``.<name>.partial-<pid>-<random>``, ``.old-``).
_SIBLING = re.compile(r"^\.(?P<name>.*)\.(?P<kind>partial|old)-(?P<pid>\d+)-[A-Za-z0-9_]+$")
#: errno values that only a write can raise: the file system is full, read-only...
WRITE_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EFBIG})
#: Bytes kept after ``.<name>.partial-`` / ``.old-`` for ``<pid>-<8 random characters>``.
_PID_TAIL = 10 + 1 + 8
#: What ``os.rename`` raises onto an existing non-empty folder (or onto a file).
_OCCUPIED = frozenset({errno.ENOTEMPTY, errno.EEXIST, errno.ENOTDIR, errno.EISDIR})


# ============================================================================ names
def _exists(path: Path) -> bool:
    """Whether ``path`` exists (False too for a name the file system cannot even look up)."""
    try:
        path.stat()
    except OSError:  # missing, or e.g. a name over NAME_MAX (which Path.exists raises)
        return False
    return True


def name_max(path: str | os.PathLike[str]) -> int:
    """The longest file name (bytes) of the file system ``path`` is on (or would be on).

    Asked of the nearest existing folder (``os.pathconf`` PC_NAME_MAX); 255 when it does
    not say.
    """
    folder = Path(path)
    while not _exists(folder) and folder != folder.parent:
        folder = folder.parent
    try:
        return int(os.pathconf(folder, "PC_NAME_MAX"))
    except (OSError, ValueError):  # not answered by this file system: the POSIX usual
        return _DEFAULT_NAME_MAX


def _shortened(name: str, room: int) -> str:
    """``name`` if it fits in ``room`` bytes, else its start, ``~`` and a hash of it all.

    The same ``name`` and ``room`` always give the same result (a later run finds the
    temporary folders of an earlier one by it).
    """
    raw = os.fsencode(name)
    if len(raw) <= room:
        return name
    digest = hashlib.sha1(raw).hexdigest()[:8]
    return os.fsdecode(raw[: max(room - len(digest) - 1, 0)]) + "~" + digest


def _sibling_name(path: Path, middle: str, tail_bytes: int) -> str:
    """``.<name><middle>`` with ``<name>`` shortened so that ``tail_bytes`` more still fit."""
    room = name_max(path.parent) - 1 - len(os.fsencode(middle)) - tail_bytes
    return f".{_shortened(path.name, room)}{middle}"


def _sibling_prefix(target: Path, kind: str) -> str:
    """``.<name>.<kind>-`` for ``target`` (the same for every run, whatever its pid)."""
    return _sibling_name(target, f".{kind}-", _PID_TAIL)


def _temporary_name(path: Path, suffix: str) -> Path:
    token = secrets.token_hex(4)
    middle = f".{os.getpid()}.{token}{suffix}"
    return path.with_name(_sibling_name(path, middle, 0))


def _check_name_lengths(out: str | os.PathLike[str], target: Path) -> None:
    """Refuse an output path with a name (of a folder still to create) over NAME_MAX."""
    folder = target
    while not _exists(folder) and folder != folder.parent:
        limit = name_max(folder.parent)
        size = len(os.fsencode(folder.name))
        if size > limit:
            shown = folder.name if len(folder.name) <= 24 else folder.name[:20] + "..."
            raise InvalidInputError(
                f"output folder {shown!r} in {str(out)[:60]!r}: the name is {size} bytes, "
                f"over the file system's limit of {limit} bytes (NAME_MAX); choose a shorter "
                "name"
            )
        folder = folder.parent


# ============================================================================ write errors
def errno_of(exc: BaseException) -> int | None:
    """The errno of ``exc`` or of the OSError it was raised from (None when there is none).

    Some writers re-raise an OSError as a new one with their own text and no errno
    (pydicom puts its traceback into the message); the original is its cause or context.
    """
    seen: BaseException | None = exc
    for _ in range(16):  # a chain is short; a cycle must not hang
        if seen is None:
            return None
        if isinstance(seen, OSError) and seen.errno is not None:
            return seen.errno
        seen = seen.__cause__ or seen.__context__
    return None


def _write_error(exc: BaseException, path: str | os.PathLike[str]) -> OSError | None:
    """An OSError naming ``path`` for a write error of the file system, else None."""
    if not isinstance(exc, OSError):
        return None
    code = errno_of(exc)
    if code not in WRITE_ERRNOS:
        return None
    return OSError(code, os.strerror(code), str(path))


def _remove(path: Path) -> None:
    """Remove a file or a folder tree (what is already gone is fine)."""
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with suppress(FileNotFoundError):
            path.unlink()


# ============================================================================ one file
@contextmanager
def atomic_path(path: str | Path, *, suffix: str = ".tmp") -> Iterator[Path]:
    """Yield a new temporary path beside ``path``; rename it onto ``path`` on success.

    The caller writes the temporary path (a file through any writer that opens it by
    name, or a folder it creates there). On an exception the temporary file or folder is
    removed and the exception propagates; ``path`` is left as it was. A write error of
    the file system (no space, quota, read-only, file too large) propagates as an
    :class:`OSError` naming ``path`` and nothing of the writer's own message.

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
    except BaseException as exc:
        _remove(tmp)
        clean = _write_error(exc, final)
        if clean is not None:
            raise clean from exc
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


# ============================================================================ output folders
def _occupied(out: str | os.PathLike[str]) -> OutputExistsError:
    return OutputExistsError(
        f"output folder {str(out)!r} was written by another run while this one ran; this "
        "run's output was not kept (use --force to replace the other)"
    )


def _move_into_place(tmp: Path, target: Path, out: str | os.PathLike[str], *, force: bool) -> None:
    """Rename the finished folder ``tmp`` onto ``target``.

    Without ``force`` a plain :func:`os.rename`: onto a missing or empty folder only (the
    kernel refuses a non-empty one, which another run may have put there meanwhile). With
    ``force`` an existing ``target`` is first renamed aside and put back if the final
    rename fails; it is deleted only once the new folder is in place.
    """
    (tmp / _MARKER).unlink(missing_ok=True)
    if not force:
        try:
            os.rename(tmp, target)
        except OSError as exc:
            if exc.errno in _OCCUPIED:
                raise _occupied(out) from None
            raise
        return
    if not target.exists():
        os.replace(tmp, target)
        return
    old = target.parent / f"{_sibling_prefix(target, 'old')}{os.getpid()}-{secrets.token_hex(4)}"
    os.replace(target, old)
    try:
        os.replace(tmp, target)
    except BaseException:
        os.replace(old, target)
        raise
    shutil.rmtree(old, ignore_errors=True)


def _missing_folders(folder: Path) -> list[Path]:
    """``folder`` and its ancestors that do not exist yet, deepest first."""
    missing = []
    while not _exists(folder) and folder != folder.parent:
        missing.append(folder)
        folder = folder.parent
    return missing


def _remove_empty(folders: Iterable[Path]) -> None:
    """Remove the folders (deepest first) while they are empty."""
    for folder in folders:
        try:
            folder.rmdir()
        except OSError:  # not empty (another run writes there) or already gone
            return


def _folder_mode() -> int:
    """The mode a new folder gets under this process's umask (e.g. 0o755 under 022)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o777 & ~mask


def _new_partial(target: Path) -> Path:
    """The temporary sibling of ``target`` for this run, with its marker file."""
    prefix = f"{_sibling_prefix(target, 'partial')}{os.getpid()}-"  # mkdtemp adds 8 chars
    tmp = Path(tempfile.mkdtemp(prefix=prefix, dir=target.parent))
    tmp.chmod(_folder_mode())  # mkdtemp makes it 0700; the output folder follows the umask
    (tmp / _MARKER).write_text(f"{socket.gethostname()}\n{os.getpid()}\n", encoding="utf-8")
    return tmp


def _process_ended(pid: int) -> bool:
    """Whether process ``pid`` of this host has ended (a zombie has; unknown: no)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # exists, owned by another user; or cannot tell
        return False
    try:
        stat = Path(f"/proc/{pid}/stat").read_text(encoding="ascii")
    except OSError:  # no /proc: alive as far as we can tell
        return False
    return stat[stat.rindex(")") + 2 :].startswith(("Z", "X"))


def _marker_of(folder: Path) -> tuple[str, int] | None:
    """(host, pid) of a temporary output folder's marker; None without a readable one."""
    try:
        host, pid = (folder / _MARKER).read_text(encoding="utf-8").split()[:2]
        return host, int(pid)
    except (OSError, ValueError):
        return None


def _stale_note(path: Path, pid: int, what: str) -> None:
    warnings.warn(
        f"{what} {path} of an rtplan run (process {pid}) that ended without cleaning up",
        RtplanWarning,
        stacklevel=4,
    )


def _replaced_folder(entry: Path, name: str, target: Path) -> Path | None:
    """The output folder an ``.old-`` sibling was moved aside from (None when unsure).

    A shortened name (``~`` and a hash) is only known for ``target`` itself.
    """
    if entry.name.startswith(_sibling_prefix(target, "old")):
        return target
    if re.search(r"~[0-9a-f]{8}$", name):
        return None
    return entry.parent / name


def _clean_stale_siblings(target: Path) -> None:
    """Remove what killed runs left in ``target``'s folder (see the module notes)."""
    try:
        entries = sorted(target.parent.iterdir())
    except OSError:  # no parent yet, or not listable: nothing to clean
        return
    host = socket.gethostname()
    for entry in entries:
        found = _SIBLING.match(entry.name)
        if found is None or entry.is_symlink() or not entry.is_dir():
            continue
        pid = int(found["pid"])
        if found["kind"] == "partial":
            if _marker_of(entry) == (host, pid) and _process_ended(pid):
                shutil.rmtree(entry, ignore_errors=True)
                _stale_note(entry, pid, "removed the unfinished output folder")
            continue
        original = _replaced_folder(entry, found["name"], target)
        if original is None or not _process_ended(pid):
            continue
        if _exists(original):
            shutil.rmtree(entry, ignore_errors=True)
            _stale_note(entry, pid, "removed the replaced output folder")
            continue
        try:
            os.rename(entry, original)
        except OSError as exc:
            _stale_note(entry, pid, f"could not put back {original} ({exc.strerror}) from")
        else:
            _stale_note(entry, pid, f"put back {original} from")


@contextmanager
def staged_output(
    out: str | os.PathLike[str],
    *,
    force: bool = False,
    inputs: Iterable[str | os.PathLike[str] | None] = (),
) -> Iterator[Path]:
    """Write an output folder all at once: into a temporary sibling, renamed at the end.

    See the module notes for the temporary names, concurrent runs, and what a killed run
    leaves (and the next run removes).

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
        is atomic on one file system). If the block raises, the temporary folder and the
        parent folders created for ``out`` are removed and ``out`` is left as it was.

    Raises
    ------
    RtplanError
        If ``out`` is a file, a non-empty folder without ``force``, overlaps an input, or
        has a name over the file system's NAME_MAX.
    OutputExistsError
        If another run wrote ``out`` while this one ran (without ``force``).
    OSError
        The file system refused a write (no space, read-only...): names ``out``.

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
    _check_name_lengths(out, target)
    _check_output_folder(out, target, force=force, inputs=inputs)
    existed = _exists(target)
    _clean_stale_siblings(target)
    if not existed and _exists(target):  # put back from a killed run: check it again
        _check_output_folder(out, target, force=force, inputs=inputs)
    created = _missing_folders(target.parent)
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _new_partial(target)
    except OSError as exc:
        _remove_empty(created)
        if exc.errno is None:
            raise
        raise OSError(exc.errno, os.strerror(exc.errno), str(out)) from exc
    try:
        yield tmp
        _move_into_place(tmp, target, out, force=force)
    except BaseException as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        _remove_empty(created)
        clean = _write_error(exc, out)
        if clean is not None:
            raise clean from exc
        raise
