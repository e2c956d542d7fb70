"""Assertion helpers for tests of code that uses rtplan (public, like numpy.testing)."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from rtplan.grid import GRID_ATOL_MM, ImageGrid

__all__ = ["assert_grid_equal", "assert_mask_equal"]


def assert_grid_equal(
    actual: ImageGrid, expected: ImageGrid, *, atol_mm: float = GRID_ATOL_MM
) -> None:
    """Raise ``AssertionError`` naming the differing fields unless the grids are equal.

    Parameters
    ----------
    actual, expected : ImageGrid
        Grids to compare.
    atol_mm : float
        Tolerance on spacing and origin, in mm.
    """
    for g in (actual, expected):
        if not isinstance(g, ImageGrid):
            raise AssertionError(f"expected an ImageGrid, got {type(g).__name__}")
    if actual.equals(expected, atol_mm=atol_mm):
        return
    fields: dict[str, tuple[object, object]] = {
        "shape": (actual.shape, expected.shape),
        "spacing_mm": (actual.spacing_mm, expected.spacing_mm),
        "origin_mm": (actual.origin_mm, expected.origin_mm),
        "direction": (actual.direction, expected.direction),
        "frame_of_reference_uid": (actual.frame_of_reference_uid, expected.frame_of_reference_uid),
    }
    diffs = [f"{name}: {a!r} != {e!r}" for name, (a, e) in fields.items() if a != e]
    raise AssertionError("grids differ: " + "; ".join(diffs))


def assert_mask_equal(
    actual: npt.ArrayLike, expected: npt.ArrayLike, *, max_differing_voxels: int = 0
) -> None:
    """Raise ``AssertionError`` unless two masks differ in at most ``max_differing_voxels``.

    The message gives the number of voxels only in each mask and the bounding box
    ``(k, j, i)`` of the differing voxels.
    """
    a, e = np.asarray(actual, dtype=bool), np.asarray(expected, dtype=bool)
    if a.shape != e.shape:
        raise AssertionError(f"mask shapes differ: {a.shape} != {e.shape}")
    diff = a ^ e
    n = int(np.count_nonzero(diff))
    if n <= max_differing_voxels:
        return
    idx = np.argwhere(diff)
    lo, hi = idx.min(axis=0).tolist(), idx.max(axis=0).tolist()
    raise AssertionError(
        f"masks differ in {n} voxels (allowed {max_differing_voxels}): "
        f"{int(np.count_nonzero(a & ~e))} only in actual, {int(np.count_nonzero(e & ~a))} only in "
        f"expected, within index box {lo}..{hi}"
    )
