"""Mask helpers shared by the bed-region geometry (staging) and the target volumes (volumes).

Private to the package: small operations on boolean masks on one grid, used where both the
prostate-bed region of staging and the CTVs of volumes apply the same rules.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping

import numpy as np
from scipy import ndimage

from rtplan._typing import BoolMask
from rtplan._validation import bounding_box
from rtplan.errors import RtplanWarning
from rtplan.grid import ImageGrid
from rtplan.margins import Margin, crop_away_from, expand, shrink
from rtplan.structures import Structure, StructureSet

__all__ = [
    "Box",
    "closing",
    "crop_organs",
    "largest_component",
    "quiet_expand",
    "union_in_box",
    "union_of",
    "z_between",
]

#: An index box ``(slice, row, column)`` of a grid.
Box = tuple[slice, slice, slice]


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


def largest_component(mask: BoolMask) -> BoolMask:
    """The largest 6-connected component of ``mask`` (``mask`` itself when it has at most one)."""
    box = bounding_box(mask)
    if box is None:
        return mask
    labels, n = ndimage.label(mask[box])
    if n <= 1:
        return mask
    sizes = np.bincount(labels.ravel())[1:]
    out = np.zeros_like(mask)
    out[box] = labels == (int(np.argmax(sizes)) + 1)
    return out


def union_in_box(structures: Iterable[Structure], box: Box) -> BoolMask:
    """Union of ``structures`` inside ``box`` (an array of the box's shape)."""
    shape = tuple(sl.stop - sl.start for sl in box)
    out = np.zeros(shape, bool)
    for s in structures:
        sb = s.bbox
        if sb is None:
            continue
        lo = [max(a.start, b.start) for a, b in zip(sb, box)]
        hi = [min(a.stop, b.stop) for a, b in zip(sb, box)]
        if any(h <= low for low, h in zip(lo, hi)):
            continue
        src = tuple(slice(low - a.start, h - a.start) for low, h, a in zip(lo, hi, sb))
        dst = tuple(slice(low - b.start, h - b.start) for low, h, b in zip(lo, hi, box))
        out[dst] |= s.cropped_mask[src]
    return out
