"""Hypothesis strategies for rtplan's geometry: grids, masks and margins.

Each strategy takes keyword-only bounds so that property tests stay small and fast.
"""

from __future__ import annotations

import numpy as np
from hypothesis import strategies as st

from rtplan.grid import ImageGrid
from rtplan.margins import Margin

__all__ = ["grids", "margins", "masks", "uniform_margins"]

_FLIPS = (1.0, -1.0)


@st.composite
def grids(
    draw,
    *,
    min_side: int = 6,
    max_side: int = 14,
    spacings_mm: tuple[float, ...] = (0.8, 0.98, 1.0, 1.5, 2.0, 2.5, 3.0),
    allow_flips: bool = True,
) -> ImageGrid:
    """Small axial grids with anisotropic spacing, any origin and possibly flipped axes."""
    shape = tuple(draw(st.integers(min_side, max_side)) for _ in range(3))
    spacing = tuple(draw(st.sampled_from(spacings_mm)) for _ in range(3))
    origin = tuple(
        draw(st.floats(-300.0, 300.0, allow_nan=False, allow_infinity=False)) for _ in range(3)
    )
    if allow_flips:
        signs = [draw(st.sampled_from(_FLIPS)) for _ in range(3)]
    else:
        signs = [1.0, 1.0, 1.0]
    direction = tuple(np.diag(signs).reshape(-1).tolist())
    return ImageGrid(shape=shape, spacing_mm=spacing, origin_mm=origin, direction=direction)


@st.composite
def masks(
    draw,
    grid: ImageGrid,
    *,
    border: int | tuple[int, int, int] = 0,
    max_blobs: int = 4,
    allow_empty: bool = True,
) -> np.ndarray:
    """Bool masks on ``grid`` made of a few boxes and random voxels, ``border`` voxels clear.

    ``border`` keeps the mask away from the grid edge (per axis when a tuple), so an
    expansion by a bounded margin stays inside the grid.
    """
    b = np.broadcast_to(np.asarray(border, dtype=int), (3,))
    out = np.zeros(grid.shape, bool)
    lo = b
    hi = np.array(grid.shape) - b  # exclusive
    if np.any(hi <= lo):
        return out
    n_blobs = draw(st.integers(0 if allow_empty else 1, max_blobs))
    for _ in range(n_blobs):
        start = [draw(st.integers(int(lo[a]), int(hi[a]) - 1)) for a in range(3)]
        stop = [draw(st.integers(start[a] + 1, int(hi[a]))) for a in range(3)]
        out[tuple(slice(s, e) for s, e in zip(start, stop))] = True
    seed = draw(st.integers(0, 2**32 - 1))
    density = draw(st.sampled_from((0.0, 0.05, 0.2)))
    if density:
        rng = np.random.default_rng(seed)
        sub = out[lo[0] : hi[0], lo[1] : hi[1], lo[2] : hi[2]]
        sub |= rng.random(sub.shape) < density
    if not allow_empty and not out.any():
        out[tuple(int(v) for v in (lo + hi) // 2)] = True
    return out


_MM = st.sampled_from((0.0, 0.5, 1.0, 1.5, 2.0, 2.5, 3.0, 4.0))


@st.composite
def margins(draw, *, max_mm: float = 4.0) -> Margin:
    """Anisotropic margins with each direction in [0, max_mm] mm (often round numbers)."""
    vals = [draw(_MM.filter(lambda v: v <= max_mm) | st.floats(0.0, max_mm)) for _ in range(6)]
    return Margin(*vals)


def uniform_margins(*, max_mm: float = 4.0) -> st.SearchStrategy[float]:
    """Uniform margins in mm."""
    return _MM.filter(lambda v: v <= max_mm) | st.floats(0.0, max_mm)
