"""Atomic output: write beside the destination, then rename (private module).

Every writer of rtplan goes through :func:`atomic_path`, so a failure never leaves a
half-written file, and outputs get the permissions the umask gives any new file (unlike
:func:`tempfile.mkstemp`, which creates 0600 files).
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

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
