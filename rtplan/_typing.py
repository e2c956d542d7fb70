"""Type aliases shared across rtplan."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

BoolMask = npt.NDArray[np.bool_]
FloatArray = npt.NDArray[np.float64]
Vec3 = tuple[float, float, float]
Shape3 = tuple[int, int, int]
