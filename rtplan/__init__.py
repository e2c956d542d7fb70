"""rtplan: PSMA PET/CT-guided salvage radiotherapy planning toolkit.

Stages PSMA-positive lesions (PROMISE miTNM), builds target volumes for each field
option, estimates dose with a fast analytic model (an approximation for comparing
options, never a dose calculation for treatment), and writes DICOM RTSTRUCT / RTDOSE
and a comparative report.
"""

from rtplan.errors import (
    AtlasNotFoundError,
    DicomInputError,
    GeometryError,
    GridMismatchError,
    InvalidMarginError,
    InvalidMaskError,
    MarginOutsideGridError,
    MissingStructureError,
    ProtocolError,
    RtplanError,
    RtplanWarning,
)
from rtplan.grid import GRID_ATOL_MM, ImageGrid, check_same_grid, resample_to_grid
from rtplan.plan import Course, FieldOption, Target
from rtplan.structures import Structure, StructureSet, canonical_name

__version__ = "0.1.0"

__all__ = [
    "GRID_ATOL_MM",
    "AtlasNotFoundError",
    "Course",
    "DicomInputError",
    "FieldOption",
    "GeometryError",
    "GridMismatchError",
    "ImageGrid",
    "InvalidMarginError",
    "InvalidMaskError",
    "MarginOutsideGridError",
    "MissingStructureError",
    "ProtocolError",
    "RtplanError",
    "RtplanWarning",
    "Structure",
    "StructureSet",
    "Target",
    "__version__",
    "canonical_name",
    "check_same_grid",
    "resample_to_grid",
]
