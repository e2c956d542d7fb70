"""A tiny progress reporter: steps with elapsed time on a terminal, silent otherwise.

Used by :func:`rtplan.demo.run_demo` and the ``rtplan`` command. Messages go to
``stderr`` (so ``stdout`` stays clean for tables and pipes) and only when ``stderr`` is a
terminal, unless told otherwise. Step durations are recorded even when nothing is shown,
so a caller can say where the time went.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from typing import TextIO

__all__ = ["Progress", "ProgressLike", "as_progress"]

#: Anything that takes a progress message (a :class:`Progress` or a plain function).
ProgressLike = Callable[..., None]


class Progress:
    """Report steps with the time elapsed since the start.

    Parameters
    ----------
    enabled : bool, optional
        Show messages. Default: only when ``stream`` is a terminal (``isatty()``).
    stream : text stream, optional
        Where messages go; default ``sys.stderr`` (looked up when called, so pytest's
        capture works).
    prefix : str
        Put before every message (e.g. ``"[N1M0] "`` for work running in parallel).
    start : float, optional
        ``time.perf_counter()`` value the elapsed times count from; default now.

    Notes
    -----
    Calling the object (``progress("reading CT")``) shows one line; :meth:`step` is a
    context manager that shows the step, indents messages shown inside it and records
    its wall-clock duration in :attr:`timings` and the CPU time of this process in
    :attr:`cpu_timings` (also when disabled).

    Examples
    --------
    >>> import io
    >>> p = Progress(enabled=False)
    >>> with p.step("build"):
    ...     p("inner message")
    >>> [name for name, seconds in p.timings]
    ['build']
    >>> buf = io.StringIO()
    >>> Progress(stream=buf).enabled  # a StringIO is not a terminal
    False
    """

    def __init__(
        self,
        enabled: bool | None = None,
        *,
        stream: TextIO | None = None,
        prefix: str = "",
        start: float | None = None,
    ) -> None:
        self._stream = stream
        self.prefix = prefix
        self.enabled: bool = self._is_terminal() if enabled is None else enabled
        self.timings: list[tuple[str, float]] = []
        self.cpu_timings: list[tuple[str, float]] = []
        self._start = time.perf_counter() if start is None else start
        self._depth = 0

    def _is_terminal(self) -> bool:
        """Whether :attr:`stream` is a terminal (False for a closed or detached stream)."""
        try:
            return self.stream.isatty()
        except (OSError, ValueError):  # a closed or detached stream
            return False

    @property
    def stream(self) -> TextIO:
        """The stream messages are written to."""
        return self._stream if self._stream is not None else sys.stderr

    @property
    def elapsed_s(self) -> float:
        """Seconds since the reporter was made."""
        return time.perf_counter() - self._start

    def _show(self, text: str) -> None:
        if not self.enabled:
            return
        stream = self.stream
        stream.write(f"[{self.elapsed_s:6.1f} s] {self.prefix}{'  ' * self._depth}{text}\n")
        stream.flush()

    def __call__(self, message: object, *more: object, **_: object) -> None:
        """Show one message (extra positional parts are joined with spaces)."""
        self._show(" ".join(str(m) for m in (message, *more)))

    def step(self, message: str) -> _Step:
        """Show ``message`` now; used as ``with progress.step(...):`` also time the block.

        The block's messages are indented and its duration is recorded in
        :attr:`timings` (and shown when it ends without an error). Called without
        ``with`` it just shows the message (so code that reports through
        ``progress.step(message)`` works too).
        """
        self._show(message)
        return _Step(self, message)

    def child(self, prefix: str) -> Progress:
        """A reporter for parallel work: same switch, stream and clock, another prefix."""
        return Progress(self.enabled, stream=self._stream, prefix=prefix, start=self._start)

    def summary(self) -> str:
        """The recorded steps and their durations, one per line (for reports and logs)."""
        if not self.timings:
            return "no timed steps"
        width = max(len(name) for name, _ in self.timings)
        return "\n".join(f"{name.ljust(width)}  {seconds:7.2f} s" for name, seconds in self.timings)


class _Step:
    """Context manager of :meth:`Progress.step`."""

    def __init__(self, progress: Progress, message: str) -> None:
        self._progress = progress
        self._message = message
        self._t0 = time.perf_counter()
        self._c0 = time.process_time()

    def __enter__(self) -> None:
        self._t0 = time.perf_counter()
        self._c0 = time.process_time()
        self._progress._depth += 1

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        p = self._progress
        p._depth -= 1
        seconds = time.perf_counter() - self._t0
        p.timings.append((self._message, seconds))
        p.cpu_timings.append((self._message, time.process_time() - self._c0))
        if exc_type is None:
            p._show(f"{self._message}: done in {seconds:.1f} s")


def as_progress(progress: Progress | ProgressLike | bool | None) -> Progress:
    """A :class:`Progress` from a user argument.

    Parameters
    ----------
    progress : Progress, callable, bool or None
        ``None``: show on a terminal only; ``True``/``False``: force on/off; a
        :class:`Progress` is returned as is; another callable receives each message.
    """
    if isinstance(progress, Progress):
        return progress
    if progress is None or isinstance(progress, bool):
        return Progress(enabled=progress)
    return _CallbackProgress(progress)


class _CallbackProgress(Progress):
    """A :class:`Progress` that hands each message to a user function."""

    def __init__(self, callback: ProgressLike) -> None:
        super().__init__(enabled=True)
        self._callback = callback

    def _show(self, text: str) -> None:
        self._callback(("  " * self._depth) + text)
