"""Errors and warnings raised by rtplan: one hierarchy under :class:`RtplanError`."""

from __future__ import annotations

__all__ = [
    "AtlasNotFoundError",
    "DicomInputError",
    "GeometryError",
    "GridMismatchError",
    "InvalidInputError",
    "InvalidMarginError",
    "InvalidMaskError",
    "MarginOutsideGridError",
    "MissingStructureError",
    "OutputExistsError",
    "ProtocolError",
    "RtplanError",
    "RtplanWarning",
]


class RtplanError(Exception):
    """Base class of every error rtplan raises on purpose."""


class GeometryError(RtplanError, ValueError):
    """Image geometry that rtplan cannot represent (oblique, uneven or missing slices)."""


class GridMismatchError(RtplanError, ValueError):
    """Two arrays or structures that should share an :class:`~rtplan.grid.ImageGrid` do not."""


class InvalidInputError(RtplanError, ValueError):
    """An argument out of range or inconsistent with the others (the message names it)."""


class OutputExistsError(RtplanError, FileExistsError):
    """An output file or folder exists and overwriting was not asked for."""


class InvalidMaskError(RtplanError, ValueError):
    """A mask that is not a 3-D boolean (or strict 0/1) array on the expected grid."""


class InvalidMarginError(RtplanError, ValueError):
    """A margin that is negative, NaN or otherwise not a distance in millimetres."""


class MarginOutsideGridError(RtplanError, ValueError):
    """An expansion that would grow a structure past the edge of its grid."""


class MissingStructureError(RtplanError, KeyError):
    """One or more structures (or landmarks) a step needs are not in the structure set."""

    def __str__(self) -> str:  # KeyError would quote the message; keep it readable
        return str(self.args[0]) if self.args else ""


class DicomInputError(RtplanError, ValueError):
    """A DICOM file or series that cannot be read as expected (names the file and tag)."""


class AtlasNotFoundError(RtplanError, LookupError):
    """No atlas of the requested name (or at the requested path)."""


class ProtocolError(RtplanError, ValueError):
    """A protocol file with an unknown key, a missing value or a value out of range."""


class RtplanWarning(UserWarning):
    """Warnings rtplan emits (clipped margins, resampling, assumptions made on input)."""
