"""Mask helpers shared by the bed-region geometry (staging) and the target volumes (volumes).

Private to the package: small operations on boolean masks on one grid, used where both the
prostate-bed region of staging and the CTVs of volumes apply the same rules.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping

import numpy as np

from rtplan._typing import BoolMask
from rtplan.errors import RtplanWarning
from rtplan.grid import ImageGrid
from rtplan.margins import Margin, crop_away_from, expand, shrink
from rtplan.structures import StructureSet

__all__ = ["closing", "crop_organs", "quiet_expand", "union_of", "z_between"]


def closing(mask: BoolMask, grid: ImageGrid, radius_mm: float) -> BoolMask:
    """Morphological closing by ``radius_mm`` (expand, then shrink), clipped at the grid edge."""
    if radius_mm <= 0 or not mask.any():
        return mask
    closed: BoolMask = mask | shrink(quiet_expand(mask, grid, radius_mm), grid, radius_mm)
    return closed


def crop_organs(
    mask: BoolMask,
    ss: StructureSet,
    grid: ImageGrid,
    groups: Mapping[tuple[str, ...], float],
) -> BoolMask:
    """``mask`` without the organ groups (each kept ``gap`` mm away) and inside ``Body``."""
    for names, gap in groups.items():
        avoid = union_of(ss, names, grid)
        if avoid.any():
            mask = crop_away_from(mask, avoid, grid, gap) if gap > 0 else mask & ~avoid
    body = union_of(ss, ("Body",), grid)
    if body.any():
        mask &= body
    return mask


def quiet_expand(mask: BoolMask, grid: ImageGrid, margin: Margin | float) -> BoolMask:
    """Expansion for intermediate regions: clipped at the grid edge without a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RtplanWarning)
        return expand(mask, grid, margin, clip=True)


def union_of(ss: StructureSet, names: Iterable[str], grid: ImageGrid) -> BoolMask:
    """Union of the named structures present in ``ss`` (synonyms resolved), on ``grid``."""
    out = np.zeros(grid.shape, bool)
    seen: set[str] = set()
    for n in names:
        key = ss.resolve(n)
        if key is not None and key not in seen:
            seen.add(key)
            s = ss[key]
            if s.bbox is not None:
                out[s.bbox] |= s.cropped_mask
    return out


def z_between(grid: ImageGrid, lo_mm: float, hi_mm: float) -> BoolMask:
    """Bool mask of the slices whose centre lies in [lo, hi] (half-slice tolerance)."""
    z = grid.axis_coordinates_mm()[0]
    tol = 1e-6
    sel = (z >= lo_mm - tol) & (z <= hi_mm + tol)
    out = np.zeros(grid.shape, bool)
    out[sel] = True
    return out
