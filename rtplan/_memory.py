"""The memory a run needs, estimated before its large arrays are made (private module).

A grid spacing the options allow can still need more memory than the machine has (a
0.5 mm dose grid over a pelvis is 2 x 10^8 voxels; a 0.2 mm CT grid 8 x 10^9). Rather than
let such a run fail half-way (or the kernel kill it), :func:`plan_case
<rtplan.demo.plan_case>`, :func:`run_demo <rtplan.demo.run_demo>` and ``rtplan atlas
export/show`` estimate the memory first and refuse, with the figure, a run that needs more
than is available.

The model
---------
``bytes = 32 B x N_ct + N_dose x (24 B + 48 B x options)``, with ``N_ct`` the voxels of the
CT (atlas) grid and ``N_dose`` those of the dose grid. The factors are the peaks measured
with :mod:`tracemalloc` (which sees numpy's buffers) on the shipped atlas at 5 x 3 x 3 and
2.5 x 2 x 2 mm with dose grids of 3 and 5 mm and one or two options (the four demo
cases), rounded up; they do not depend on the grid size (the same per voxel within 5 %
between the two grids):

=========================================================  =============================
step                                                       measured peak
=========================================================  =============================
building the shipped atlas                                 7.3 B per CT voxel (4.7 kept)
building the options' target volumes                       10.1 B per CT voxel
dose estimate and metrics                                  14 B + 35 B per option, per
                                                           dose voxel
writing CT series + RTSTRUCT (atlas export, demo case)     28.8 B per CT voxel
=========================================================  =============================

The sum is an upper bound (the steps do not all peak at once): within 1.3-1.8 x of the
measured peak of a whole demo case. In a demo run with several worker processes the
atlas (6 B per CT voxel) is built once and shared by the forked workers; the rest is
counted once per worker.

What is available
-----------------
The smallest of: the memory the kernel reports as available (``MemAvailable`` of
``/proc/meminfo``, else ``os.sysconf("SC_AVPHYS_PAGES")``), what the control group's
memory limit leaves (cgroup v2 ``memory.max``, v1 ``memory.limit_in_bytes``), what the
address-space limit (``ulimit -v``) leaves, and the environment variable
``RTPLAN_MEMORY_LIMIT`` (bytes, or with a binary suffix: ``8G``, ``512M``), for a limit of
one's own on a shared machine.
"""

from __future__ import annotations

import math
import os
import re
import resource
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

from rtplan._typing import Shape3
from rtplan.errors import InvalidInputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10
    import tomli as tomllib

__all__: list[str] = []

#: Bytes per CT-grid voxel of a whole run (atlas, target volumes, writing); see the notes.
CT_BYTES_PER_VOXEL = 32
#: Bytes per CT-grid voxel of the atlas itself (shared by forked demo workers).
ATLAS_BYTES_PER_VOXEL = 6
#: Bytes per dose-grid voxel of the dose estimate, and more per option.
DOSE_BYTES_PER_VOXEL = 24
DOSE_BYTES_PER_VOXEL_PER_OPTION = 48
#: The environment variable of a memory limit of one's own.
LIMIT_VARIABLE = "RTPLAN_MEMORY_LIMIT"

#: The atlas module's default grid spacing (mm) when a definition does not give one.
_DEFAULT_SPACING = (2.5, 0.9765625, 0.9765625)
_UNITS = {"": 1, "K": 1024, "M": 1024**2, "G": 1024**3, "T": 1024**4}


class MemoryLimitError(InvalidInputError):
    """A run would need more memory than is available (the message gives both figures)."""


@dataclass(frozen=True)
class Available:
    """Memory a run may use: ``bytes``, and ``source``, what limits it (for messages)."""

    bytes: int
    source: str


# ============================================================================ estimates
def plan_bytes(n_ct: int, n_dose: int, n_options: int) -> int:
    """Bytes of one case: anatomy and targets on the CT grid, dose of ``n_options``.

    Parameters
    ----------
    n_ct : int
        Voxels of the CT (atlas) grid.
    n_dose : int
        Voxels of the dose grid.
    n_options : int
        Field options compared.
    """
    per_dose_voxel = DOSE_BYTES_PER_VOXEL + DOSE_BYTES_PER_VOXEL_PER_OPTION * n_options
    return CT_BYTES_PER_VOXEL * n_ct + per_dose_voxel * n_dose


def demo_bytes(n_ct: int, n_dose: int, n_options: int, jobs: int) -> int:
    """Bytes of a demo run: the atlas once, each worker's case on top of it."""
    shared = ATLAS_BYTES_PER_VOXEL * n_ct
    return shared + jobs * (plan_bytes(n_ct, n_dose, n_options) - shared)


def image_bytes(n_ct: int) -> int:
    """Bytes of building and writing an atlas of ``n_ct`` voxels (atlas export / show)."""
    return CT_BYTES_PER_VOXEL * n_ct


def dose_voxels(extent_mm: Sequence[float], spacing_mm: float) -> int:
    """Voxels of a cubic dose grid of ``spacing_mm`` over a box of ``extent_mm`` (any order)."""
    return math.prod(max(1, math.ceil(e / spacing_mm - 1e-6)) for e in extent_mm)


def shipped_atlas_grid(
    name: str, spacing_mm: Sequence[float] | None
) -> tuple[Shape3, tuple[float, float, float]]:
    """The grid shape and spacing (mm) ``load_atlas(name, spacing_mm=...)`` builds, unbuilt.

    The field of view comes from a build on a 2 x 2 x 2 grid (fast); the rule is that of
    the atlas module (z: the extent over the spacing plus one slice; y, x: the extent over
    the spacing); the default grid is the definition's ``default_shape_yx`` and
    ``default_spacing_mm``.
    """
    from rtplan.atlas import load_atlas  # a build of 8 voxels; atlas imports nothing of ours

    tiny = load_atlas(name, shape=(2, 2, 2), validate=False).grid
    sz, sy, sx = tiny.spacing_mm
    ext_z, ext_y, ext_x = sz * 1, sy * 2, sx * 2  # z: (n - 1) spacings; y, x: n spacings
    if spacing_mm is None:
        meta = _definition(name)
        z_mm, y_mm, x_mm = (float(v) for v in meta.get("default_spacing_mm", _DEFAULT_SPACING))
        ny, nx = (int(v) for v in meta.get("default_shape_yx", [512, 512]))
        nz = math.ceil(ext_z / z_mm - 1e-6) + 1
        return (nz, ny, nx), (z_mm, ext_y / ny, ext_x / nx)
    z_mm, y_mm, x_mm = (float(v) for v in spacing_mm)
    shape = (
        math.ceil(ext_z / z_mm - 1e-6) + 1,
        math.ceil(ext_y / y_mm - 1e-6),
        math.ceil(ext_x / x_mm - 1e-6),
    )
    return shape, (z_mm, y_mm, x_mm)


def _definition(name: str) -> dict[str, list[float]]:
    """The ``[atlas]`` table of a shipped atlas definition (lists of numbers used here)."""
    text = resources.files("rtplan.atlases").joinpath(name, "atlas.toml").read_text("utf-8")
    table: dict[str, list[float]] = tomllib.loads(text).get("atlas", {})
    return table


def positive_real(value: object) -> bool:
    """Whether ``value`` is a finite number > 0 (not a bool); others are refused elsewhere."""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    return math.isfinite(value) and value > 0


# ============================================================================ available
def _parse_size(text: str) -> int:
    """Bytes of ``RTPLAN_MEMORY_LIMIT`` (``8G``, ``512M``, ``1.5G``, ``1000000``)."""
    found = re.fullmatch(r"\s*([0-9]*\.?[0-9]+)\s*([KMGT]?)i?B?\s*", text, re.IGNORECASE)
    if found is None or float(found[1]) <= 0:
        raise InvalidInputError(
            f"{LIMIT_VARIABLE}={text!r} is not a memory size; give bytes or a number with "
            "K, M, G or T, e.g. 8G"
        )
    return int(float(found[1]) * _UNITS[found[2].upper()])


def _kernel_available() -> Available:
    """What the kernel reports as available (MemAvailable), else as free."""
    try:
        with open("/proc/meminfo", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("MemAvailable:"):
                    return Available(int(line.split()[1]) * 1024, "available")
    except OSError:  # no /proc (not Linux): ask sysconf
        pass
    pages = os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    return Available(int(pages), "free")


def _read_int(path: str) -> int | None:
    """The integer in a one-value file (None when missing or not a number, e.g. ``max``)."""
    try:
        return int(Path(path).read_text(encoding="ascii").strip())
    except (OSError, ValueError):
        return None


def _cgroup_headroom() -> Available | None:
    """What the memory limit of this process's control group leaves (v2, then v1)."""
    physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    v1 = "/sys/fs/cgroup/memory/memory."
    for limit_file, usage_file in (
        ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory.current"),
        (f"{v1}limit_in_bytes", f"{v1}usage_in_bytes"),
    ):
        limit = _read_int(limit_file)
        if limit is None or limit >= physical:  # no limit (``max``, or a huge number)
            continue
        used = _read_int(usage_file) or 0
        return Available(max(limit - used, 0), "left under the memory limit of the control group")
    return None


def _address_space_headroom() -> Available | None:
    """What the address-space limit (``ulimit -v``) leaves this process."""
    soft, _ = resource.getrlimit(resource.RLIMIT_AS)
    if soft == resource.RLIM_INFINITY:
        return None
    used = 0
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmSize:"):
                    used = int(line.split()[1]) * 1024
    except OSError:  # no /proc: the whole limit
        pass
    return Available(max(soft - used, 0), "left under the address-space limit (ulimit -v)")


def available_bytes() -> Available:
    """The memory a run may use now, and what limits it (see the module notes).

    Raises
    ------
    InvalidInputError
        ``RTPLAN_MEMORY_LIMIT`` is set to something that is not a size.
    """
    found = [_kernel_available()]
    if sys.platform == "linux":
        found += [a for a in (_cgroup_headroom(),) if a is not None]
    found += [a for a in (_address_space_headroom(),) if a is not None]
    text = os.environ.get(LIMIT_VARIABLE, "").strip()
    if text:
        found.append(Available(_parse_size(text), f"allowed by {LIMIT_VARIABLE}"))
    return min(found, key=lambda a: a.bytes)


def size_text(n_bytes: float) -> str:
    """``"1.5 GB"`` / ``"350.2 MB"`` (decimal units)."""
    if n_bytes >= 1e9:
        return f"{n_bytes / 1e9:.1f} GB"
    return f"{n_bytes / 1e6:.1f} MB"


def check_memory(need_bytes: int, what: str, *, advice: str = "") -> Available:
    """Refuse a run that needs more than the available memory; return what is available.

    Parameters
    ----------
    need_bytes : int
        The estimate (one of the ``*_bytes`` functions).
    what : str
        The run, for the message (``"the dose estimate of 2 options on a 0.5 mm grid"``).
    advice : str
        What needs less, added to the message.

    Raises
    ------
    MemoryLimitError
        With both figures and the ``advice``.
    """
    available = available_bytes()
    if need_bytes > available.bytes:
        raise MemoryLimitError(
            f"{what} needs about {size_text(need_bytes)} of memory, more than the "
            f"{size_text(available.bytes)} {available.source}" + (f"; {advice}" if advice else "")
        )
    return available


def coarser_spacing(spacing_mm: float, n_voxels: int, room_voxels: float) -> float:
    """The spacing (mm) at which a grid of ``n_voxels`` at ``spacing_mm`` fits ``room_voxels``."""
    if room_voxels <= 0:
        return math.inf
    ratio = max(1.0, n_voxels / room_voxels)
    return spacing_mm * math.pow(ratio, 1.0 / 3.0)
