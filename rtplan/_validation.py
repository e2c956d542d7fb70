"""Input checks used at rtplan's public boundary (private module)."""

from __future__ import annotations

from collections.abc import Iterable
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from rtplan.errors import InvalidInputError, InvalidMaskError
from rtplan.grid import ImageGrid

T = TypeVar("T", bound=str)


def as_mask(
    mask: npt.ArrayLike, grid: ImageGrid | None = None, *, name: str = "mask"
) -> np.ndarray:
    """Return ``mask`` as a 3-D bool array, refusing anything that is not clearly binary.

    Parameters
    ----------
    mask : array_like
        Bool array, or an integer/float array holding only 0 and 1.
    grid : ImageGrid, optional
        When given, the mask's shape must equal ``grid.shape``.
    name : str
        What the mask is, for the error message.

    Raises
    ------
    InvalidMaskError
        When the array is not 3-D, not binary, or has the wrong shape.
    """
    a = np.asarray(mask)
    if a.ndim != 3:
        raise InvalidMaskError(f"{name} must be a 3-D array [slice, row, col], got {a.ndim}-D")
    if grid is not None and a.shape != grid.shape:
        raise InvalidMaskError(f"{name} has shape {a.shape} but its grid has shape {grid.shape}")
    if a.dtype == np.bool_:
        return a
    if not (np.issubdtype(a.dtype, np.integer) or np.issubdtype(a.dtype, np.floating)):
        raise InvalidMaskError(f"{name} must be boolean or 0/1 numbers, got dtype {a.dtype}")
    nonbinary = (a != 0) & (a != 1)
    if np.any(nonbinary):
        bad = np.unique(a[nonbinary])[:5]
        raise InvalidMaskError(
            f"{name} must be boolean or hold only 0 and 1, found values such as {bad.tolist()}; "
            "threshold it explicitly (e.g. mask > 0.5) or pass a label map to a label-map reader"
        )
    return a.astype(bool)


def check_choice(value: object, valid: Iterable[T], *, name: str) -> T:
    """Return ``value`` if it is one of ``valid``; else raise ``ValueError`` listing them."""
    options = tuple(valid)
    if value not in options:
        raise InvalidInputError(
            f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}"
        )
    return value  # type: ignore[return-value]


def bounding_box(mask: np.ndarray) -> tuple[slice, slice, slice] | None:
    """Tight bounding box of the True voxels of a 3-D mask, or ``None`` if it is empty."""
    any_k = np.flatnonzero(mask.any(axis=(1, 2)))
    if any_k.size == 0:
        return None
    sub = mask[any_k[0] : any_k[-1] + 1]
    any_j = np.flatnonzero(sub.any(axis=(0, 2)))
    any_i = np.flatnonzero(sub.any(axis=(0, 1)))
    return (
        slice(int(any_k[0]), int(any_k[-1]) + 1),
        slice(int(any_j[0]), int(any_j[-1]) + 1),
        slice(int(any_i[0]), int(any_i[-1]) + 1),
    )
