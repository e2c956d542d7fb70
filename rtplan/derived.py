"""Organs at risk derived from the anatomy when it lacks them: the cauda equina.

SBRT constraints name organs that an anatomy often lacks: AAPM TG-101 limits the dose to
the cauda equina and the sacral plexus (@benedict2010_tg101). The cauda equina lies in the
spinal canal below the conus; when the anatomy has the lumbar vertebrae and the sacrum but
no ``CaudaEquina``, :func:`derived_oars` outlines the bony canal they enclose and uses it
for the cauda equina. The canal contains the nerve roots, so limits evaluated on it are
conservative. Every derived structure says how it was made in its ``derivation`` (written to
RTSTRUCT and shown in the report). The sacral plexus runs outside the bone and cannot be
derived this way; a constraint on it reports it missing.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import pairwise

import numpy as np
from scipy import ndimage

from rtplan._typing import BoolMask, FloatArray
from rtplan._validation import bounding_box, check_type
from rtplan.structures import Structure, StructureSet

__all__ = ["CANAL_BONES", "MAX_CANAL_GAP_MM", "derived_oars", "spinal_canal_mask"]

#: Structures whose enclosed holes make the spinal canal: lumbar and sacral vertebrae
#: (TG-263 ``VB_*``) and the sacrum.
CANAL_BONES: tuple[str, ...] = ("VB_L1", "VB_L2", "VB_L3", "VB_L4", "VB_L5", "Sacrum")

#: Longest run of slices without an enclosed canal (an intervertebral disc, mm) that is
#: bridged by the neighbouring slices' canal. 15 mm, tool default (lumbar discs are about
#: 10 mm high).
MAX_CANAL_GAP_MM = 15.0

_DERIVATION = (
    "derived by rtplan: the spinal canal enclosed by {bones} (holes of the bone on each "
    "axial slice, disc levels bridged from the neighbouring slices); the cauda equina lies "
    "in it, so limits on it are conservative"
)


def _largest_central_hole(bone: BoolMask, x_mm: FloatArray, max_off_mm: float) -> BoolMask:
    """The largest hole of a 2-D bone mask whose centroid lies near the midline (x = 0)."""
    holes = ndimage.binary_fill_holes(bone) & ~bone
    labels, n = ndimage.label(holes)
    if n == 0:
        return np.zeros(bone.shape, bool)
    best, size = 0, 0
    for lab in range(1, n + 1):
        comp = labels == lab
        cols = np.nonzero(comp)[1]
        if abs(float(x_mm[cols].mean())) > max_off_mm:
            continue
        if cols.size > size:
            best, size = lab, cols.size
    return labels == best if best else np.zeros(bone.shape, bool)


def _bridge_gaps(canal: BoolMask, slice_mm: float) -> BoolMask:
    """Copy the nearest slice's canal into short runs of empty slices between two canals."""
    has = canal.any(axis=(1, 2))
    idx = np.nonzero(has)[0]
    out = canal.copy()
    max_gap = int(MAX_CANAL_GAP_MM // slice_mm)
    for a, b in pairwise(idx):
        gap = b - a - 1
        if 0 < gap <= max_gap:
            for k in range(a + 1, b):
                out[k] = canal[a] if k - a <= b - k else canal[b]
    return out


def spinal_canal_mask(structures: StructureSet, bones: Sequence[str]) -> BoolMask | None:
    """The spinal canal enclosed by ``bones`` on the structures' grid, or ``None``.

    Parameters
    ----------
    structures : StructureSet
        The anatomy.
    bones : sequence of str
        Names of the bones to use (those the set lacks are skipped).

    Returns
    -------
    ndarray of bool or None
        The canal (holes of the bones' union near the midline, slice by slice, with disc
        gaps bridged); ``None`` when no bone is present or no hole is found.
    """
    present = [structures[b] for b in bones if b in structures and not structures[b].is_empty]
    if not present:
        return None
    grid = structures.grid
    union = np.zeros(grid.shape, bool)
    for s in present:
        union |= s.mask
    box = bounding_box(union)
    assert box is not None  # the bones are not empty
    local = union[box]
    x_mm = grid.axis_coordinates_mm()[2][box[2]]
    canal = np.zeros(local.shape, bool)
    for k in np.nonzero(local.any(axis=(1, 2)))[0]:
        canal[k] = _largest_central_hole(local[k], x_mm, max_off_mm=20.0)
    if not canal.any():
        return None
    out = np.zeros(grid.shape, bool)
    out[box] = _bridge_gaps(canal, grid.spacing_mm[0])
    return out


def derived_oars(structures: StructureSet) -> tuple[Structure, ...]:
    """Organs at risk rtplan derives because the anatomy lacks them.

    Parameters
    ----------
    structures : StructureSet
        The anatomy.

    Returns
    -------
    tuple of Structure
        ``CaudaEquina`` (the bony spinal canal of :data:`CANAL_BONES`, see
        :func:`spinal_canal_mask`) when the anatomy has none but has some of those bones;
        otherwise empty. Each carries its ``derivation``.

    Raises
    ------
    TypeError
        If ``structures`` is not a :class:`~rtplan.structures.StructureSet`.
    """
    check_type(structures, StructureSet, name="structures")
    if "CaudaEquina" in structures:
        return ()
    bones = [b for b in CANAL_BONES if b in structures]
    mask = spinal_canal_mask(structures, bones)
    if mask is None:
        return ()
    return (
        Structure(
            "CaudaEquina",
            mask,
            structures.grid,
            derivation=_DERIVATION.format(bones=", ".join(bones)),
        ),
    )
