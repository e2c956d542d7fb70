"""A given label that holds two segments, split where the registered atlas puts them apart.

TotalSegmentator's ``iliac_artery_*`` and ``iliac_vena_*`` hold the common and the
external iliac vessel together. Read as the common iliac, such a label would win over the
derived external segment (user structures always win) and leave it empty. Completion
keeps every voxel the user gave but names each after the nearer of the two segments the
registered atlas places there: the split falls at the derived bifurcation.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
from scipy import ndimage

from rtplan._typing import BoolMask
from rtplan.structures import Structure

__all__ = ["split_label"]


def _box_of(structures: list[Structure]) -> tuple[slice, slice, slice]:
    """The index box holding every structure's box."""
    boxes = [s.bbox for s in structures if s.bbox is not None]
    lo = [min(int(b[a].start) for b in boxes) for a in range(3)]
    hi = [max(int(b[a].stop) for b in boxes) for a in range(3)]
    return (slice(lo[0], hi[0]), slice(lo[1], hi[1]), slice(lo[2], hi[2]))


def _in_box(s: Structure, box: tuple[slice, slice, slice]) -> BoolMask:
    """The structure's mask on the index box ``box`` (which holds its own box)."""
    out = np.zeros(tuple(b.stop - b.start for b in box), bool)
    if s.bbox is not None:
        inner = tuple(slice(b.start - o.start, b.stop - o.start) for b, o in zip(s.bbox, box))
        out[inner] = s.cropped_mask
    return out


def split_label(label: Structure, parts: Mapping[str, Structure]) -> dict[str, BoolMask]:
    """Each voxel of ``label`` given to the nearest of ``parts`` (ties: the first).

    Parameters
    ----------
    label : Structure
        The given label holding several segments.
    parts : mapping of str to Structure
        The segments where the registered atlas puts them, on ``label``'s grid, in order
        of preference for ties. A part absent from the patient (empty) gets nothing.

    Returns
    -------
    dict of str to ndarray of bool
        Every part's share of ``label``, on ``label``'s box (``label.bbox``); together
        they are ``label`` exactly.

    Examples
    --------
    >>> from rtplan.grid import ImageGrid
    >>> g = ImageGrid(shape=(6, 1, 1), spacing_mm=(1.0, 1.0, 1.0), origin_mm=(0, 0, 0))
    >>> tube = Structure("A_Iliac_L", np.ones(g.shape, bool), g)
    >>> upper = Structure("CI", np.array([0, 0, 0, 0, 1, 1], bool).reshape(g.shape), g)
    >>> lower = Structure("EI", np.array([1, 1, 0, 0, 0, 0], bool).reshape(g.shape), g)
    >>> shares = split_label(tube, {"CI": upper, "EI": lower})
    >>> shares["CI"].ravel().astype(int).tolist(), shares["EI"].ravel().astype(int).tolist()
    ([0, 0, 0, 1, 1, 1], [1, 1, 1, 0, 0, 0])
    """
    if label.bbox is None:
        return {n: np.zeros((0, 0, 0), bool) for n in parts}
    present = {n: s for n, s in parts.items() if s.bbox is not None}
    names = list(parts)
    if not present:  # nothing to tell the segments apart: all goes to the first
        return {n: label.cropped_mask & (i == 0) for i, n in enumerate(names)}
    box = _box_of([label, *present.values()])
    inner = tuple(slice(b.start - o.start, b.stop - o.start) for b, o in zip(label.bbox, box))
    spacing = label.grid.spacing_mm
    distances = np.stack(
        [
            ndimage.distance_transform_edt(~_in_box(present[n], box), sampling=spacing)[inner]
            if n in present
            else np.full(label.cropped_mask.shape, np.inf)
            for n in names
        ]
    )
    nearest = np.argmin(distances, axis=0)
    return {n: label.cropped_mask & (nearest == i) for i, n in enumerate(names)}
