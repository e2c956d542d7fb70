"""Input checks used at rtplan's public boundary (private module)."""

from __future__ import annotations

import os
from collections.abc import Iterable
from numbers import Real
from typing import TypeVar

import numpy as np
import numpy.typing as npt

from rtplan._typing import BoolMask
from rtplan.errors import InvalidInputError, InvalidMaskError
from rtplan.grid import ImageGrid

T = TypeVar("T")

#: What a path argument may be.
PATH_TYPES: tuple[type, ...] = (str, os.PathLike)


def as_mask(mask: npt.ArrayLike, grid: ImageGrid | None = None, *, name: str = "mask") -> BoolMask:
    """Return ``mask`` as a 3-D bool array, refusing anything that is not clearly binary.

    Parameters
    ----------
    mask : array_like
        Bool array, or an integer/float array holding only 0 and 1.
    grid : ImageGrid, optional
        When given, the mask's shape must equal ``grid.shape``.
    name : str
        What the mask is, for the error message.

    Returns
    -------
    ndarray of bool, shape ``grid.shape``
        ``mask`` itself when it is already bool, else a new array.

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
    for option in options:
        if value == option:
            return option
    raise InvalidInputError(f"{name} must be one of {', '.join(map(repr, options))}; got {value!r}")


def _short_repr(value: object, limit: int = 60) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _with_article(noun: str) -> str:
    return f"an {noun}" if noun[:1].lower() in "aeiou" else f"a {noun}"


def check_type(
    value: object,
    expected: type | tuple[type, ...],
    *,
    name: str,
    expected_text: str | None = None,
) -> None:
    """Raise ``TypeError`` naming the argument when ``value`` is not of the expected type.

    Parameters
    ----------
    value : object
        The argument as received.
    expected : type or tuple of type
        What ``isinstance`` must accept.
    name : str
        The argument's name, for the message.
    expected_text : str, optional
        How to describe the expected type; default the type names.

    Raises
    ------
    TypeError
        When ``isinstance(value, expected)`` is False.

    Examples
    --------
    >>> check_type("a", str, name="name")
    >>> check_type(3, str, name="name")
    Traceback (most recent call last):
    ...
    TypeError: name must be a str, got int 3
    """
    if isinstance(value, expected):
        return
    if expected_text is None:
        types = expected if isinstance(expected, tuple) else (expected,)
        expected_text = " or ".join(_with_article(t.__name__) for t in types)
    raise TypeError(
        f"{name} must be {expected_text}, got {type(value).__name__} {_short_repr(value)}"
    )


def is_real(value: object) -> bool:
    """True for a real number (Python or numpy), False for a bool or anything else."""
    return not isinstance(value, (bool, np.bool_)) and isinstance(
        value, (Real, np.integer, np.floating)
    )


def is_integer(value: object) -> bool:
    """True for an integer (Python or numpy), False for a bool or anything else."""
    return not isinstance(value, (bool, np.bool_)) and isinstance(value, (int, np.integer))


def check_real(value: object, *, name: str) -> None:
    """Raise ``TypeError`` naming the argument unless ``value`` is a real number (not a bool)."""
    if not is_real(value):
        raise TypeError(f"{name} must be a number, got {type(value).__name__} {_short_repr(value)}")


def check_reals(value: object, *, name: str, allow_scalar: bool = True) -> None:
    """Raise ``TypeError`` unless ``value`` is a number or a sequence/array of numbers.

    Strings, bools and ``None`` are refused (``np.asarray`` would turn ``"2.5"`` into a
    number silently).
    """
    if allow_scalar and is_real(value):
        return
    if isinstance(value, np.ndarray):
        ok = value.ndim == 1 and (
            np.issubdtype(value.dtype, np.integer) or np.issubdtype(value.dtype, np.floating)
        )
    elif isinstance(value, (list, tuple)):
        ok = all(is_real(v) for v in value)
    else:
        ok = False
    if not ok:
        what = "a number or a sequence of numbers" if allow_scalar else "a sequence of numbers"
        raise TypeError(f"{name} must be {what}, got {type(value).__name__} {_short_repr(value)}")


def check_integers(value: object, *, name: str) -> None:
    """Raise ``TypeError`` unless ``value`` is a sequence (or 1-D array) of integers."""
    if isinstance(value, np.ndarray):
        ok = value.ndim == 1 and np.issubdtype(value.dtype, np.integer)
    elif isinstance(value, (list, tuple)):
        ok = all(is_integer(v) for v in value)
    else:
        ok = False
    if not ok:
        raise TypeError(
            f"{name} must be a sequence of integers, got {type(value).__name__} "
            f"{_short_repr(value)}"
        )


def check_names(value: object, *, name: str) -> None:
    """Raise ``TypeError`` unless ``value`` is an iterable of str that is not itself a str."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Iterable):
        raise TypeError(
            f"{name} must be an iterable of names (e.g. a list of str), got "
            f"{type(value).__name__} {_short_repr(value)}"
        )


def bounding_box(mask: BoolMask) -> tuple[slice, slice, slice] | None:
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
