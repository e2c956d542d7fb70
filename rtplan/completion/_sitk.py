"""SimpleITK as the package uses it (private).

SimpleITK ships a ``py.typed`` marker, but its SWIG-generated API carries no annotations,
so mypy (strict) flags every call into it as untyped. The package therefore reaches
SimpleITK through this handle, and names its images and transforms with the aliases
below; both are ``Any`` because the third-party objects are untyped, not arbitrary.
"""

from __future__ import annotations

from typing import Any, TypeAlias

import SimpleITK as _SimpleITK

#: The SimpleITK module (Any: its SWIG functions are unannotated).
sitk: Any = _SimpleITK

#: A ``SimpleITK.Image`` (Any: unannotated SWIG class).
SitkImage: TypeAlias = Any

#: A ``SimpleITK.Transform`` or one of its subclasses (Any: unannotated SWIG class).
SitkTransform: TypeAlias = Any
