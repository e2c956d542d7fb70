"""Mask helpers shared by the bed-region geometry (staging) and the target volumes (volumes).

Private to the package: small operations on boolean masks on one grid, used where both the
prostate-bed region of staging and the CTVs of volumes apply the same rules.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterable, Mapping

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from rtplan._typing import BoolMask
from rtplan._validation import bounding_box
from rtplan.errors import RtplanWarning
from rtplan.grid import ImageGrid
from rtplan.margins import Margin, crop_away_from, expand, shrink
from rtplan.structures import Structure, StructureSet

__all__ = [
    "Box",
    "bbox_of",
    "closing",
    "crop_organs",
    "grown_box",
    "largest_component",
    "named",
    "quiet_expand",
    "reach_voxels",
    "slices_between",
    "union_in_box",
    "union_of",
    "whole_box",
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
    *,
    box: Box | None = None,
) -> BoolMask:
    """``mask`` without the organ groups (each kept ``gap`` mm away) and inside ``Body``.

    With ``box`` (an index box of ``grid``), ``mask`` is the array of that box only; the
    result is the whole-grid result there, and the organs are read (and grown by their
    gap) on the box padded by the gap's reach, not on the grid.
    """
    if box is None:
        for names, gap in groups.items():
            avoid = union_of(ss, names, grid)
            if avoid.any():
                mask = crop_away_from(mask, avoid, grid, gap) if gap > 0 else mask & ~avoid
        body = union_of(ss, ("Body",), grid)
        if body.any():
            mask &= body
        return mask
    for names, gap in groups.items():
        organs = named(ss, names)
        if gap <= 0:
            mask = mask & ~union_in_box(organs, box)
            continue
        padded = grown_box(box, reach_voxels(grid, gap), grid.shape)
        avoid = union_in_box(organs, padded)
        if avoid.any():
            grown = quiet_expand(avoid, grid.crop(padded), gap)
            mask = mask & ~grown[_within(box, padded)]
    bodies = named(ss, ("Body",))
    if bbox_of(bodies) is not None:  # kept inside it, also where the box holds none of it
        mask &= union_in_box(bodies, box)
    return mask


def quiet_expand(mask: BoolMask, grid: ImageGrid, margin: Margin | float) -> BoolMask:
    """Expansion for intermediate regions: clipped at the grid edge without a warning."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RtplanWarning)
        return expand(mask, grid, margin, clip=True)


def named(ss: StructureSet, names: Iterable[str]) -> list[Structure]:
    """The structures of ``ss`` with these names (synonyms resolved), each once, in order."""
    keys: list[str] = []
    for n in names:
        key = ss.resolve(n)
        if key is not None and key not in keys:
            keys.append(key)
    return [ss[key] for key in keys]


def union_of(ss: StructureSet, names: Iterable[str], grid: ImageGrid) -> BoolMask:
    """Union of the named structures present in ``ss`` (synonyms resolved), on ``grid``."""
    out = np.zeros(grid.shape, bool)
    for s in named(ss, names):
        if s.bbox is not None:
            out[s.bbox] |= s.cropped_mask
    return out


def slices_between(grid: ImageGrid, lo_mm: float, hi_mm: float) -> BoolMask:
    """Per slice: True when its centre lies in [lo, hi] (half-slice tolerance), shape (nk,)."""
    z = grid.axis_coordinates_mm()[0]
    tol = 1e-6
    sel: BoolMask = (z >= lo_mm - tol) & (z <= hi_mm + tol)
    return sel


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


def reach_voxels(grid: ImageGrid, margin: Margin | float) -> npt.NDArray[np.intp]:
    """Per axis, how many voxels away an expansion by ``margin`` (mm) can change a result.

    An expansion (:func:`rtplan.margins.expand`) reaches along an axis at most that
    axis's margin plus half the largest voxel side (its border voxels' sub-voxel term),
    nothing along an axis without margin, and a voxel's growth depends on the mask up to
    two voxels around it (its surface taps). So a mask cut at a box face at least this
    far from a voxel grows there exactly as the whole mask does.
    """
    m = margin if isinstance(margin, Margin) else Margin.uniform(max(float(margin), 0.0))
    spacing = np.asarray(grid.spacing_mm, float)
    per_axis = np.array(
        [max(m.superior, m.inferior), max(m.anterior, m.posterior), max(m.left, m.right)]
    )
    reach_mm = np.where(per_axis > 0, per_axis + 0.5 * float(spacing.max()), 0.0)
    pad: npt.NDArray[np.intp] = np.ceil(reach_mm / spacing).astype(np.intp) + 3
    return pad


def bbox_of(structures: Iterable[Structure]) -> Box | None:
    """The bounding box of the union of ``structures`` (from their boxes), or None if empty."""
    boxes = [s.bbox for s in structures if s.bbox is not None]
    if not boxes:
        return None
    k, j, i = (
        slice(min(b[a].start for b in boxes), max(b[a].stop for b in boxes)) for a in range(3)
    )
    return (k, j, i)


def grown_box(box: Box, pad: npt.ArrayLike, shape: tuple[int, ...]) -> Box:
    """``box`` grown by ``pad`` voxels per axis (one number or one per axis), inside ``shape``."""
    p = np.broadcast_to(np.asarray(pad, np.intp), (3,))
    k, j, i = (
        slice(max(b.start - int(n), 0), min(b.stop + int(n), size))
        for b, n, size in zip(box, p, shape)
    )
    return (k, j, i)


def whole_box(grid: ImageGrid) -> Box:
    """The index box of the whole grid."""
    k, j, i = (slice(0, n) for n in grid.shape)
    return (k, j, i)


def _within(inner: Box, outer: Box) -> Box:
    """Where ``inner`` lies in the array of ``outer`` (both index boxes of one grid)."""
    k, j, i = (slice(a.start - b.start, a.stop - b.start) for a, b in zip(inner, outer))
    return (k, j, i)
