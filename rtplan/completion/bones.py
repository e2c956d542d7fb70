"""Bones and body from CT numbers, named by the registered atlas and by shape rules.

The *extent* of every derived bone comes from the patient's CT: voxels of at least
``threshold_hu`` inside the body, with the marrow enclosed by cortex on each slice filled
in (:func:`bone_mask_from_ct`). The *names* come from the atlas bones carried onto the
patient by registration (candidates), refined by rules on the shape of the bone mask
(:func:`label_bones`):

* a connected piece of bone (6-connectivity) that the candidates cover well
  (``component_coverage``) and that one bone dominates (``component_share``) is that
  bone entirely: vertebral bodies separated by their discs, a femur separated from the
  acetabulum by the joint space, the coccyx;
* other pieces (the pelvic ring, where ilium, ischium, symphysis and sacrum touch) are
  named voxel by voxel: the candidate covering the voxel, else the nearest candidate
  within ``label_distance_mm``; bone farther from every candidate (femoral shafts, L3)
  stays unnamed;
* a left-sided bone never crosses to the right of the midline by more than
  ``midline_tolerance_mm`` (and vice versa): such voxels take the other side's name;
* levels stack: inside the sacrum, each slice belongs wholly to one sacral level, the one
  whose slab (its boundary planes carried over by the registration) holds the slice's
  centre (:func:`levels_between`; the atlas defines S1-S3 as axial slabs).

Bones the user gave are never relabelled: their voxels keep the user's name and only the
rest of the bone mask is shared among the derived bones.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from rtplan._typing import BoolMask, FloatArray
from rtplan.completion._images import Box, box_slices, mask_box
from rtplan.errors import InvalidInputError
from rtplan.grid import ImageGrid
from rtplan.structures import Structure

__all__ = [
    "BoneLabels",
    "BoneRules",
    "body_from_ct",
    "bone_mask_from_ct",
    "label_bones",
    "levels_between",
]

#: A label image (0: none).
_Labels = npt.NDArray[np.int16]

#: 6-connectivity in 3-D.
_FACE_CONNECTED = ndimage.generate_binary_structure(3, 1)


@dataclass(frozen=True)
class BoneRules:
    """Thresholds and shape rules of the bone segmentation (tool defaults).

    Attributes
    ----------
    threshold_hu : float
        CT number from which a voxel is bone (HU). Cortical bone is several hundred HU,
        marrow and cancellous bone less; enclosed marrow is filled in per slice.
    marrow_min_hu : float
        Mean CT number from which a hole enclosed by bone on a slice is marrow (filled)
        rather than the spinal canal or soft tissue (HU).
    body_threshold_hu : float
        CT number from which a voxel is patient rather than air (HU).
    min_piece_cc : float
        Bone pieces smaller than this (calcifications, contrast) are dropped (cc).
    component_coverage : float
        Share of a bone piece the candidates must cover for it to be named as a whole.
    component_share : float
        Share of the covered voxels one bone must hold for it to take the whole piece.
    label_distance_mm : float
        Bone farther than this from every candidate stays unnamed (mm).
    midline_tolerance_mm : float
        How far a left- or right-sided bone may reach across the midline (mm).
    """

    threshold_hu: float = 150.0
    marrow_min_hu: float = 60.0
    body_threshold_hu: float = -400.0
    min_piece_cc: float = 0.3
    component_coverage: float = 0.7
    component_share: float = 0.9
    label_distance_mm: float = 6.0
    midline_tolerance_mm: float = 5.0

    def __post_init__(self) -> None:
        for name in ("component_coverage", "component_share"):
            value = getattr(self, name)
            if not 0 < value <= 1:
                raise InvalidInputError(f"{name} must be in (0, 1], got {value!r}")
        for name in ("min_piece_cc", "label_distance_mm", "midline_tolerance_mm"):
            if getattr(self, name) < 0:
                raise InvalidInputError(f"{name} must be >= 0, got {getattr(self, name)!r}")


def _fill_per_slice(mask: BoolMask) -> BoolMask:
    """Holes of each axial slice filled (inside the mask's box only)."""
    box = mask_box(mask)
    out = mask.copy()
    if box is None:
        return out
    sub = out[box_slices(box)]
    for k in range(sub.shape[0]):
        if sub[k].any():
            sub[k] = ndimage.binary_fill_holes(sub[k])
    return out


def _fill_marrow(mask: BoolMask, ct_hu: npt.NDArray[np.floating], min_hu: float) -> BoolMask:
    """Holes of each axial slice filled where their mean CT number is at least ``min_hu``.

    Marrow enclosed by cortex is filled; the spinal canal (cerebrospinal fluid, about
    0-30 HU) and other soft tissue ringed by bone are not.
    """
    box = mask_box(mask)
    out = mask.copy()
    if box is None:
        return out
    sl = box_slices(box)
    sub, ct = out[sl], ct_hu[sl]
    for k in range(sub.shape[0]):
        if not sub[k].any():
            continue
        holes = ndimage.binary_fill_holes(sub[k]) & ~sub[k]
        labels, n = ndimage.label(holes)
        if n == 0:
            continue
        means = np.asarray(ndimage.mean(ct[k], labels, index=np.arange(1, n + 1)))
        keep = np.concatenate([[False], means >= min_hu])
        sub[k] |= keep[labels]
    return out


def body_from_ct(
    ct_hu: npt.NDArray[np.floating], grid: ImageGrid, *, threshold_hu: float = -400.0
) -> BoolMask:
    """The patient's body: the largest piece above ``threshold_hu``, holes filled per slice.

    Parameters
    ----------
    ct_hu : ndarray, shape ``grid.shape``
        CT numbers (HU).
    grid : ImageGrid
        Geometry of ``ct_hu``.
    threshold_hu : float
        Air / patient threshold (HU; tool default -400).

    Returns
    -------
    ndarray of bool, shape ``grid.shape``
        Empty when nothing is above the threshold.

    Examples
    --------
    >>> g = ImageGrid(shape=(3, 6, 6), spacing_mm=(2.0, 1.0, 1.0), origin_mm=(0, 0, 0))
    >>> ct = np.full(g.shape, -1000.0); ct[:, 1:5, 1:5] = 0.0; ct[:, 2:4, 2:4] = -900.0
    >>> int(body_from_ct(ct, g).sum())  # the gas inside is body
    48
    """
    if ct_hu.shape != grid.shape:
        raise InvalidInputError(f"ct_hu has shape {ct_hu.shape}, expected {grid.shape}")
    above = np.asarray(ct_hu) >= threshold_hu
    labels, n = ndimage.label(above)
    if n == 0:
        return above
    sizes = np.bincount(labels.ravel())[1:]
    largest: BoolMask = labels == int(np.argmax(sizes)) + 1
    return _fill_per_slice(largest)


def bone_mask_from_ct(
    ct_hu: npt.NDArray[np.floating],
    grid: ImageGrid,
    *,
    body: BoolMask,
    rules: BoneRules | None = None,
) -> BoolMask:
    """Bone voxels: at least ``rules.threshold_hu`` inside ``body``, marrow filled per slice.

    Pieces smaller than ``rules.min_piece_cc`` are dropped.

    Parameters
    ----------
    ct_hu : ndarray, shape ``grid.shape``
        CT numbers (HU).
    grid : ImageGrid
        Geometry of ``ct_hu``.
    body : ndarray of bool, shape ``grid.shape``
        The patient (bone outside it, such as the couch, is ignored).
    rules : BoneRules, optional
        Tool defaults when omitted.

    Returns
    -------
    ndarray of bool, shape ``grid.shape``
    """
    r = rules or BoneRules()
    if ct_hu.shape != grid.shape or body.shape != grid.shape:
        raise InvalidInputError(
            f"ct_hu {ct_hu.shape} and body {body.shape} must be on the grid {grid.shape}"
        )
    bone = (np.asarray(ct_hu) >= r.threshold_hu) & body
    bone = _fill_marrow(bone, np.asarray(ct_hu), r.marrow_min_hu) & body
    box = mask_box(bone)
    if box is None:
        return bone
    sl = box_slices(box)
    labels, n = ndimage.label(bone[sl], structure=_FACE_CONNECTED)
    if n == 0:
        return bone
    sizes = np.bincount(labels.ravel()) * grid.voxel_volume_cc
    small = sizes < r.min_piece_cc
    small[0] = False
    sub = bone[sl]
    sub[small[labels]] = False
    return bone


def _nearest_labels(
    labels: _Labels, where: BoolMask, spacing_mm: Sequence[float], max_mm: float
) -> _Labels:
    """Labels of ``where`` voxels set to the nearest labelled voxel within ``max_mm``."""
    known = labels > 0
    if not known.any():
        return labels
    dist, idx = ndimage.distance_transform_edt(~known, sampling=spacing_mm, return_indices=True)
    nearest = labels[tuple(idx)]
    out = labels.copy()
    take = where & ~known & (dist <= max_mm)
    out[take] = nearest[take]
    return out


@dataclass(frozen=True)
class BoneLabels:
    """Named bone voxels: a label image over the bone mask's box.

    Attributes
    ----------
    names : tuple of str
        Label ``n`` (from 1) is ``names[n - 1]``; 0 is unnamed or not bone.
    labels : ndarray of int16
        The label image on the box.
    box : ((k0, j0, i0), (k1, j1, i1))
        The box of the grid the labels cover.
    """

    names: tuple[str, ...]
    labels: _Labels
    box: Box

    def local(self, name: str) -> BoolMask:
        """The voxels of bone ``name`` on the box."""
        out: BoolMask = self.labels == self.names.index(name) + 1
        return out

    @property
    def offset(self) -> tuple[int, int, int]:
        """Index of the box's first voxel."""
        return self.box[0]


def _paste(target: _Labels, box: Box, s: Structure, value: int, *, fill_only: bool) -> None:
    """Write ``value`` where structure ``s`` lies inside ``box`` (only on 0 with fill_only)."""
    if s.bbox is None:
        return
    lo = [max(b.start, o) for b, o in zip(s.bbox, box[0])]
    hi = [min(b.stop, o) for b, o in zip(s.bbox, box[1])]
    if any(b <= a for a, b in zip(lo, hi)):
        return
    src = s.cropped_mask[tuple(slice(a - c.start, b - c.start) for a, b, c in zip(lo, hi, s.bbox))]
    dst_sl = tuple(slice(a - o, b - o) for a, b, o in zip(lo, hi, box[0]))
    region = target[dst_sl]
    where = src & (region == 0) if fill_only else src
    region[where] = value


def label_bones(
    bone: BoolMask,
    grid: ImageGrid,
    candidates: Mapping[str, Structure],
    *,
    fixed: Mapping[str, Structure] | None = None,
    midline_x_mm: float | None = None,
    rules: BoneRules | None = None,
) -> BoneLabels:
    """Name the voxels of a bone mask from candidate bones and shape rules.

    Parameters
    ----------
    bone : ndarray of bool, shape ``grid.shape``
        The bone mask (:func:`bone_mask_from_ct`).
    grid : ImageGrid
        Its geometry.
    candidates : mapping of str to Structure
        Where each bone is expected (the atlas bones carried by registration), on
        ``grid``; earlier names win where candidates overlap. Names ending in ``_L`` /
        ``_R`` are left / right bones.
    fixed : mapping of str to Structure, optional
        Bones the user gave: their voxels keep their name and are not shared out.
    midline_x_mm : float, optional
        x of the midline (LPS mm); enables the left/right rule.
    rules : BoneRules, optional
        Tool defaults when omitted.

    Returns
    -------
    BoneLabels
        Labels of the candidates (possibly empty) and of the fixed bones, in that order.
    """
    r = rules or BoneRules()
    given = dict(fixed or {})
    names = [n for n in candidates if n not in given]
    all_names = (*names, *given)
    box = mask_box(bone) or ((0, 0, 0), (1, 1, 1))
    sl = box_slices(box)
    sub_grid = grid.crop(sl)
    cand: _Labels = np.zeros(sub_grid.shape, np.int16)
    for n, name in enumerate(names, start=1):
        _paste(cand, box, candidates[name], n, fill_only=True)
    pinned: _Labels = np.zeros(sub_grid.shape, np.int16)
    for n, name in enumerate(given, start=len(names) + 1):
        _paste(pinned, box, given[name], n, fill_only=False)
    cand[pinned > 0] = pinned[pinned > 0]
    labels = _label_pieces(bone[sl], cand, pinned, sub_grid, r, len(names))
    if midline_x_mm is not None:
        labels = _midline_rule(labels, all_names, sub_grid, midline_x_mm, r.midline_tolerance_mm)
    return BoneLabels(names=all_names, labels=labels, box=box)


def _label_pieces(
    bone: BoolMask,
    cand: _Labels,
    pinned: _Labels,
    grid: ImageGrid,
    r: BoneRules,
    n_derived: int,
) -> _Labels:
    """Label image of the bone: whole pieces where one candidate dominates, else voxelwise."""
    pieces, _ = ndimage.label(bone, structure=_FACE_CONNECTED)
    labels: _Labels = np.where(bone, cand, 0).astype(np.int16)
    voxelwise = np.zeros(bone.shape, bool)
    for piece, sl in enumerate(ndimage.find_objects(pieces), start=1):
        inside = pieces[sl] == piece
        votes = np.bincount(cand[sl][inside])
        covered = int(votes[1:].sum())
        top = int(np.argmax(votes[1:])) + 1 if covered else 0
        whole = (
            0 < top <= n_derived
            and covered >= r.component_coverage * int(inside.sum())
            and votes[top] >= r.component_share * covered
        )
        if whole:
            region = labels[sl]
            region[inside & (pinned[sl] == 0)] = top
        else:
            voxelwise[sl] |= inside
    if voxelwise.any():
        labels = _nearest_labels(labels, voxelwise, grid.spacing_mm, r.label_distance_mm)
    labels[pinned > 0] = pinned[pinned > 0]
    labels[~bone] = 0
    return labels


def _midline_rule(
    labels: _Labels,
    names: Sequence[str],
    grid: ImageGrid,
    midline_x_mm: float,
    tolerance_mm: float,
) -> _Labels:
    """Left bones right of the midline (beyond the tolerance) take the right name, and back."""
    x_mm = grid.axis_coordinates_mm()[2]
    index = {name: n for n, name in enumerate(names, start=1)}
    right_side = (x_mm < midline_x_mm - tolerance_mm)[None, None, :]
    left_side = (x_mm > midline_x_mm + tolerance_mm)[None, None, :]
    out = labels.copy()
    for name, n in index.items():
        other = index.get(name[:-2] + "_R") if name.endswith("_L") else None
        if other is None:
            continue
        out[(labels == n) & right_side] = other
        out[(labels == other) & left_side] = n
    return out


def levels_between(
    region: BoolMask, z_mm: FloatArray, bounds_mm: Mapping[str, tuple[float, float]]
) -> dict[str, BoolMask]:
    """Split a region into axial slabs: each slice goes to the level holding its centre.

    Parameters
    ----------
    region : ndarray of bool, shape (K, J, I)
        The bone to split (e.g. the sacrum).
    z_mm : ndarray of float, shape (K,)
        z of the slice centres (mm).
    bounds_mm : mapping of str to (z_low, z_high)
        The slab of each level on this grid (mm); where slabs overlap the first listed
        wins.

    Returns
    -------
    dict of str to ndarray of bool
        One mask per level; slices outside every slab belong to none.

    Examples
    --------
    >>> reg = np.ones((4, 1, 1), bool)
    >>> out = levels_between(reg, np.array([0.0, 1.0, 2.0, 3.0]), {"S1": (1.5, 9.0)})
    >>> out["S1"][:, 0, 0].tolist()
    [False, False, True, True]
    """
    out = {n: np.zeros(region.shape, bool) for n in bounds_mm}
    for k in np.flatnonzero(region.any(axis=(1, 2))):
        for name, (lo, hi) in bounds_mm.items():
            if min(lo, hi) <= float(z_mm[k]) < max(lo, hi):
                out[name][k] = region[k]
                break
    return out
