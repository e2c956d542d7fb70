"""Anatomical atlases: the shipped synthetic pelvis and the user's own anatomy.

An :class:`Atlas` is a CT image in Hounsfield units on an :class:`~rtplan.grid.ImageGrid`,
a :class:`~rtplan.structures.StructureSet` with AAPM TG-263 names, and named landmark
points in LPS millimetres. It comes from one of three sources:

* a shipped parametric definition (``atlases/<name>/atlas.toml``: simple solids in
  patient LPS mm, no code), rasterised on any requested grid by :func:`load_atlas`, with
  anatomical variation (scale, bladder and rectal filling, a seeded random variant);
* a DICOM folder with a CT series and an RTSTRUCT (:func:`atlas_from_dicom`);
* NIfTI label maps as written by TotalSegmentator (:func:`atlas_from_label_maps`).

The solids of a definition are rasterised only inside their own bounding boxes (never
over the full grid); a voxel is inside a solid when its centre is. Structures are built
in file order, each as the union of its ``add`` solids minus its ``subtract`` solids,
intersected with its ``intersect`` solids and ``within`` structures, minus the
``exclude`` structures (optionally grown by a gap). The CT is painted in the same order,
later structures overriding earlier ones, when it is first read (:attr:`Atlas.ct_hu`);
see ``atlases/README.md`` for the format.
"""

from __future__ import annotations

import functools
import hashlib
import importlib.resources
import json
import math
import os
import re
import sys
import threading
import time
import warnings
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Literal, TypeGuard, TypeVar

import numpy as np
import numpy.typing as npt
from scipy import ndimage

from rtplan._progress import Progress, ProgressLike, as_progress
from rtplan._typing import BoolMask, FloatArray, Shape3, Vec3
from rtplan._validation import (
    PATH_TYPES,
    check_integers,
    check_names,
    check_real,
    check_reals,
    check_type,
    is_integer,
)
from rtplan.errors import (
    AtlasNotFoundError,
    DicomInputError,
    GeometryError,
    GridMismatchError,
    InvalidInputError,
    MissingStructureError,
    RtplanError,
    RtplanWarning,
)
from rtplan.grid import ImageGrid
from rtplan.structures import Structure, StructureSet, canonical_name

if TYPE_CHECKING:
    from rtplan.completion import CompletionSettings

_ScalarT = TypeVar("_ScalarT", bound=np.generic)

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on Python 3.10 only
    import tomli as tomllib

__all__ = [
    "ATLAS_LANDMARKS",
    "ATLAS_STRUCTURES",
    "TOTALSEGMENTATOR_NAMES",
    "Atlas",
    "atlas_from_dicom",
    "atlas_from_label_maps",
    "complete_anatomy",
    "derive_landmarks",
    "list_atlases",
    "load_atlas",
    "read_landmarks",
    "validate_anatomy",
]

#: Structures (TG-263 names) that the later planning steps use.
ATLAS_STRUCTURES: tuple[str, ...] = (
    "Body",
    "Bone_Ilium_L",
    "Bone_Ilium_R",
    "Bone_Ischium_L",
    "Bone_Ischium_R",
    "PubicSymphys",
    "Sacrum",
    "VB_S1",
    "VB_S2",
    "VB_S3",
    "Coccyx",
    "VB_L4",
    "VB_L5",
    "Femur_Head_L",
    "Femur_Head_R",
    "Bladder",
    "Rectum",
    "Canal_Anal",
    "Colon_Sigmoid",
    "Spc_Bowel",
    "PenileBulb",
    "Urethra",
    "Levator_Ani",
    "Obturator_Int_L",
    "Obturator_Int_R",
    "Iliopsoas_L",
    "Iliopsoas_R",
    "A_Aorta",
    "V_Venacava_I",
    "A_Iliac_L",
    "A_Iliac_R",
    "V_Iliac_L",
    "V_Iliac_R",
    "A_Iliac_Ext_L",
    "A_Iliac_Ext_R",
    "V_Iliac_Ext_L",
    "V_Iliac_Ext_R",
    "A_Iliac_Int_L",
    "A_Iliac_Int_R",
    "V_Iliac_Int_L",
    "V_Iliac_Int_R",
    "ProstateBed",
)

#: Landmark keys (LPS mm; the z of a point is the level it marks).
ATLAS_LANDMARKS: tuple[str, ...] = (
    "PubicSymphysis_Top",
    "VUA",
    "VasDeferens_CutEnd",
    "SacralPromontory",
    "L4L5_Interspace",
    "L5S1_Interspace",
    "AorticBifurcation",
    "S3_Bottom",
    "FemurHead_Top_L",
    "FemurHead_Top_R",
    "PenileBulb_Top",
)

#: TotalSegmentator class name -> TG-263 name, for classes whose TG-263 name is not
#: found by :func:`rtplan.structures.canonical_name` or means something else there.
#: TotalSegmentator's ``iliac_artery_*`` / ``iliac_vena_*`` hold the common and the
#: external iliac vessels together; they are mapped to the common iliac names (and
#: recorded in ``parameters["combined_labels"]``: completion splits them).
TOTALSEGMENTATOR_NAMES: dict[str, str] = {
    "iliac_artery_left": "A_Iliac_L",
    "iliac_artery_right": "A_Iliac_R",
    "iliac_vena_left": "V_Iliac_L",
    "iliac_vena_right": "V_Iliac_R",
    "urinary_bladder": "Bladder",
    "femur_left": "Femur_Head_L",
    "femur_right": "Femur_Head_R",
    "hip_left": "Bone_Ilium_L",
    "hip_right": "Bone_Ilium_R",
    "sacrum": "Sacrum",
    "vertebrae_L4": "VB_L4",
    "vertebrae_L5": "VB_L5",
    "vertebrae_S1": "VB_S1",
    "small_bowel": "Bowel_Small",
    "colon": "Colon",
    "prostate": "Prostate",
    "aorta": "A_Aorta",
    "inferior_vena_cava": "V_Venacava_I",
    "iliopsoas_left": "Iliopsoas_L",
    "iliopsoas_right": "Iliopsoas_R",
    "rectum": "Rectum",
    "body": "Body",
}

#: The TotalSegmentator labels that hold two segments: the TG-263 name they are read as
#: -> the segments they hold (that name first). :func:`complete_anatomy` shares each one
#: out between its segments at the bifurcation of the registered atlas.
_COMBINED_LABELS: dict[str, tuple[str, str]] = {
    "A_Iliac_L": ("A_Iliac_L", "A_Iliac_Ext_L"),
    "A_Iliac_R": ("A_Iliac_R", "A_Iliac_Ext_R"),
    "V_Iliac_L": ("V_Iliac_L", "V_Iliac_Ext_L"),
    "V_Iliac_R": ("V_Iliac_R", "V_Iliac_Ext_R"),
}

# Structures that may overlap (subset relations by design); everything else in the
# validated categories must be disjoint.
_ALLOWED_OVERLAPS: frozenset[frozenset[str]] = frozenset(
    frozenset(p)
    for p in (
        ("Sacrum", "VB_S1"),
        ("Sacrum", "VB_S2"),
        ("Sacrum", "VB_S3"),
        ("ProstateBed", "Urethra"),
    )
)
_NOT_VALIDATED_FOR_OVERLAP = frozenset({"Body"})

#: Held while an atlas paints its CT on first read (:meth:`Atlas._painted_on_read`).
_PAINT_LOCK = threading.Lock()

# Default CT numbers for structures of user anatomy without a CT image (tool default).
_PSEUDO_CT_HU: tuple[tuple[tuple[str, ...], float], ...] = (
    (("Body", "External"), -100.0),
    (("Bone", "VB_", "Sacrum", "Coccyx", "Femur", "PubicSymphys"), 600.0),
    (("A_", "V_"), 40.0),
    (("Bladder",), 10.0),
    (("Iliopsoas", "Obturator", "Levator", "Gluteus", "Muscle"), 45.0),
)


# ============================================================================ Atlas


@dataclass(frozen=True, eq=False)
class Atlas:
    """A patient anatomy: CT image, TG-263 structures and landmark points.

    Parameters
    ----------
    name : str
        Atlas name (shipped atlas name, or the folder name of user anatomy).
    grid : ImageGrid
        Geometry of ``ct_hu`` and of every structure.
    ct_hu : ndarray of float32, shape ``grid.shape``
        CT numbers in Hounsfield units. A shipped (parametric) atlas paints its CT on the
        first read of this attribute, not when it is built: planning reads only the
        structures and landmarks, so a run that writes no image never paints it.
    structures : StructureSet
        Structures on ``grid`` with TG-263 names where known.
    landmarks : dict of str to (x, y, z)
        Named points in LPS mm (see :data:`ATLAS_LANDMARKS`).
    source : str
        Where the anatomy came from (atlas definition file, DICOM folder, label maps).
    parameters : dict
        Build parameters (scale, fillings, seed, jitter drawn) for provenance: numbers,
        strings, ``None`` and lists or dicts of them.
    landmark_derivations : dict of str to str
        How each landmark rtplan derived (rather than read) was derived, by key; a
        landmark not listed was given (atlas definition, RTSTRUCT POINT ROI, argument).
        Derived structures say so themselves (:attr:`Structure.derivation`).
    variation_groups : dict of str to str
        The variation group of each structure and landmark of a shipped atlas (from its
        definition): a variant moves the members of one group together (one shift, one
        size factor). Empty for user anatomy.

    Raises
    ------
    TypeError
        When an argument is not of the type above.
    GridMismatchError
        When ``ct_hu`` or ``structures`` is not on ``grid``.
    """

    name: str
    grid: ImageGrid
    ct_hu: npt.NDArray[np.float32]
    structures: StructureSet
    landmarks: dict[str, Vec3]
    source: str = ""
    parameters: dict[str, object] = field(default_factory=dict)
    landmark_derivations: dict[str, str] = field(default_factory=dict)
    variation_groups: dict[str, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_type(self.name, str, name="name")
        check_type(self.grid, ImageGrid, name="grid")
        check_type(self.ct_hu, np.ndarray, name="ct_hu", expected_text="a numpy array")
        check_type(self.structures, StructureSet, name="structures")
        check_type(self.landmarks, dict, name="landmarks")
        check_type(self.source, str, name="source")
        check_type(self.parameters, dict, name="parameters")
        check_type(self.landmark_derivations, dict, name="landmark_derivations")
        check_type(self.variation_groups, dict, name="variation_groups")
        unknown = [k for k in self.landmark_derivations if k not in self.landmarks]
        if unknown:
            raise InvalidInputError(
                f"landmark_derivations of atlas {self.name!r} names landmarks it does not "
                f"have: {', '.join(map(str, unknown))}"
            )
        if self.ct_hu.shape != self.grid.shape:
            raise GridMismatchError(
                f"ct_hu of atlas {self.name!r} has shape {self.ct_hu.shape} but its grid is "
                f"{self.grid.describe()}"
            )
        if not self.structures.grid.equals(self.grid):
            raise GridMismatchError(
                f"the structures of atlas {self.name!r} are on {self.structures.grid.describe()} "
                f"but its grid is {self.grid.describe()}"
            )

    @classmethod
    def _painted_on_read(
        cls,
        paint: Callable[[], npt.NDArray[np.float32]],
        *,
        name: str,
        grid: ImageGrid,
        structures: StructureSet,
        landmarks: dict[str, Vec3],
        source: str,
        parameters: dict[str, object],
        variation_groups: dict[str, str],
    ) -> Atlas:
        """An atlas whose CT is ``paint()``, called on the first read of :attr:`ct_hu`.

        ``paint`` must return a float32 array of ``grid.shape``; the other fields are
        checked as usual.
        """
        # a zero-stride stand-in passes the checks; then the field is left unset, so that
        # reading it reaches __getattr__, which paints it once
        atlas = cls(
            name=name,
            grid=grid,
            ct_hu=np.broadcast_to(np.float32(0.0), grid.shape),
            structures=structures,
            landmarks=landmarks,
            source=source,
            parameters=parameters,
            variation_groups=variation_groups,
        )
        del atlas.__dict__["ct_hu"]
        atlas.__dict__["_ct_painter"] = paint
        return atlas

    if not TYPE_CHECKING:  # hidden from mypy, which would accept any attribute name

        def __getattr__(self, name: str) -> object:
            # Only reached for an attribute that is not set: the CT of an atlas built by
            # _painted_on_read before its first read.
            state = self.__dict__
            if name == "ct_hu" and ("_ct_painter" in state or "ct_hu" in state):
                with _PAINT_LOCK:  # threads reading it at once paint it once
                    if "ct_hu" not in state:
                        state["ct_hu"] = state["_ct_painter"]()
                        del state["_ct_painter"]
                return state["ct_hu"]
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")

    def __getstate__(self) -> dict[str, object]:
        """The fields for pickle and copy, with the CT painted (a painter is not kept)."""
        state = dict(self.__dict__)
        state["ct_hu"] = self.ct_hu
        state.pop("_ct_painter", None)
        return state

    def missing(
        self,
        structures: Iterable[str] | None = None,
        landmarks: Iterable[str] | None = None,
    ) -> list[str]:
        """Names of the structures and landmarks that are absent (or empty).

        Parameters
        ----------
        structures : iterable of str, optional
            Structure names to look for (synonyms accepted). Default
            :data:`ATLAS_STRUCTURES`.
        landmarks : iterable of str, optional
            Landmark keys to look for. Default :data:`ATLAS_LANDMARKS`.

        Returns
        -------
        list of str
            Missing structure names, then missing landmark keys, in the order asked.

        Raises
        ------
        TypeError
            When ``structures`` or ``landmarks`` is a single str rather than names.
        """
        if structures is not None:
            check_names(structures, name="structures")
        if landmarks is not None:
            check_names(landmarks, name="landmarks")
        names = ATLAS_STRUCTURES if structures is None else tuple(structures)
        keys = ATLAS_LANDMARKS if landmarks is None else tuple(landmarks)
        out = [n for n in names if n not in self.structures or self.structures[n].is_empty]
        out += [k for k in keys if k not in self.landmarks]
        return out

    def require(
        self,
        structures: Iterable[str] = (),
        landmarks: Iterable[str] = (),
        *,
        purpose: str = "this step",
    ) -> None:
        """Raise :class:`MissingStructureError` naming every missing structure and landmark.

        Parameters
        ----------
        structures, landmarks : iterable of str
            What the step needs.
        purpose : str
            The step, for the message.
        """
        s_missing = self.missing(structures, ())
        l_missing = self.missing((), landmarks)
        if s_missing or l_missing:
            parts = []
            if s_missing:
                parts.append("structures " + ", ".join(s_missing))
            if l_missing:
                parts.append("landmarks " + ", ".join(l_missing))
            raise MissingStructureError(
                f"{purpose} needs {' and '.join(parts)}, missing from atlas {self.name!r} "
                f"(it has structures: {', '.join(self.structures.names) or 'none'}; "
                f"landmarks: {', '.join(self.landmarks) or 'none'})"
            )

    def export_ct(
        self,
        folder: str | Path,
        *,
        patient_name: str = "RTPLAN^PHANTOM",
        patient_id: str = "RTPLAN-PHANTOM-0001",
        series_description: str | None = None,
    ) -> Path:
        """Write the CT as a DICOM CT Image series (one file per slice).

        Uses :func:`rtplan.dicom_io.write_ct_series`. The default patient name and ID
        are obviously not a person.

        Parameters
        ----------
        folder : str or Path
            Output folder (created; must not hold another series).
        patient_name, patient_id : str
            PatientName and PatientID written into every slice.
        series_description : str, optional
            SeriesDescription; default ``"rtplan atlas <name>"``.

        Returns
        -------
        Path
            The folder written.
        """
        from rtplan.dicom_io import write_ct_series

        check_type(folder, PATH_TYPES, name="folder", expected_text="a str or path")
        return Path(
            write_ct_series(
                self.ct_hu,
                self.grid,
                folder,
                patient_name=patient_name,
                patient_id=patient_id,
                series_description=series_description or f"rtplan atlas {self.name}",
            )
        )

    @property
    def derived_structures(self) -> dict[str, str]:
        """Derived structures (name -> how they were derived), in the set's order."""
        return {n: s.derivation for n, s in self.structures.items() if s.derived}

    def derivations(self) -> list[tuple[str, str, str]]:
        """Everything rtplan derived: ``(kind, name, how)`` rows, structures then landmarks.

        ``kind`` is ``"structure"`` or ``"landmark"``; a report lists these rows.
        """
        rows = [("structure", n, how) for n, how in self.derived_structures.items()]
        rows += [("landmark", k, how) for k, how in self.landmark_derivations.items()]
        return rows

    def export_dicom(
        self,
        folder: str | Path,
        *,
        patient_name: str = "RTPLAN^PHANTOM",
        patient_id: str = "RTPLAN-PHANTOM-0001",
        uid_seed: str | None = None,
    ) -> Path:
        """Write the CT, the structures and the landmarks as DICOM, ready to read back.

        The CT goes to ``folder/CT`` (:meth:`export_ct`); the structures and the
        landmarks (as POINT ROIs) to ``folder/RS_<name>.dcm``
        (:func:`rtplan.dicom_io.write_rtstruct_with_points`), derived structures and
        landmarks marked as such. :func:`atlas_from_dicom` on ``folder`` gives the same
        structures, landmarks and derivation marks back.

        Parameters
        ----------
        folder : str or Path
            Output folder; must not exist or be empty.
        patient_name, patient_id : str
            PatientName and PatientID written into every file.
        uid_seed : str, optional
            Makes the RTSTRUCT's new UIDs deterministic.

        Returns
        -------
        Path
            ``folder``.

        Raises
        ------
        FileExistsError
            When ``folder`` holds files.
        """
        from rtplan.dicom_io import write_rtstruct_with_points

        check_type(folder, PATH_TYPES, name="folder", expected_text="a str or path")
        out = Path(folder)
        if out.exists() and any(out.iterdir()):
            raise FileExistsError(f"{out} is not empty; export_dicom writes into a new folder")
        ct_dir = self.export_ct(out / "CT", patient_name=patient_name, patient_id=patient_id)
        write_rtstruct_with_points(
            self.structures,
            ct_dir,
            out / f"RS_{re.sub(r'[^A-Za-z0-9_.-]+', '_', self.name)}.dcm",
            points=self.landmarks,
            point_derivations=self.landmark_derivations,
            label=self.name[:16],
            uid_seed=uid_seed,
        )
        return out

    def __repr__(self) -> str:
        return (
            f"Atlas({self.name!r}, {self.grid.describe()}, {len(self.structures)} structures, "
            f"{len(self.landmarks)} landmarks)"
        )


# ============================================================================ solids

#: Integer index vectors ``(k, j, i)`` of the rasteriser.
_Index = npt.NDArray[np.int64]


def _rotation(angles_deg: FloatArray) -> FloatArray:
    """Rotation matrix R = Rz @ Ry @ Rx for angles (about x, y, z) in degrees."""
    ax, ay, az = (math.radians(float(a)) for a in angles_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    rotation: FloatArray = rz @ ry @ rx
    return rotation


class _Solid(ABC):
    """Elementary solid: bounding box and a point-in-solid test on voxel centres.

    ``x``, ``y``, ``z`` are LPS coordinates (mm) of voxel centres, broadcastable against
    each other; ``grow`` (mm) enlarges the solid (used for exclusion gaps).
    """

    @abstractmethod
    def bbox(self, grow: float) -> tuple[FloatArray, FloatArray] | None:
        """LPS box ``(lo, hi)`` (mm) holding the solid, or ``None`` when it is unbounded."""

    @abstractmethod
    def inside(self, x: FloatArray, y: FloatArray, z: FloatArray, grow: float) -> BoolMask:
        """True where the point ``(x, y, z)`` lies inside the solid grown by ``grow``."""


@dataclass
class _Ellipsoid(_Solid):
    center: FloatArray
    radii: FloatArray
    rot: FloatArray | None = None

    def bbox(self, grow: float) -> tuple[FloatArray, FloatArray]:
        r = self.radii + grow
        half = r if self.rot is None else np.sqrt(((self.rot * r[None, :]) ** 2).sum(axis=1))
        return self.center - half, self.center + half

    def inside(self, x: FloatArray, y: FloatArray, z: FloatArray, grow: float) -> BoolMask:
        r = self.radii + grow
        dx, dy, dz = x - self.center[0], y - self.center[1], z - self.center[2]
        inside: BoolMask
        if self.rot is None:
            inside = (dx / r[0]) ** 2 + (dy / r[1]) ** 2 + (dz / r[2]) ** 2 <= 1.0
            return inside
        m = self.rot  # local = R^T d
        u = m[0, 0] * dx + m[1, 0] * dy + m[2, 0] * dz
        v = m[0, 1] * dx + m[1, 1] * dy + m[2, 1] * dz
        w = m[0, 2] * dx + m[1, 2] * dy + m[2, 2] * dz
        inside = (u / r[0]) ** 2 + (v / r[1]) ** 2 + (w / r[2]) ** 2 <= 1.0
        return inside


@dataclass
class _Box(_Solid):
    lo: FloatArray
    hi: FloatArray

    def bbox(self, grow: float) -> tuple[FloatArray, FloatArray]:
        return self.lo - grow, self.hi + grow

    def inside(self, x: FloatArray, y: FloatArray, z: FloatArray, grow: float) -> BoolMask:
        lo, hi = self.lo - grow, self.hi + grow
        inside: BoolMask = (
            ((x >= lo[0]) & (x <= hi[0]))
            & ((y >= lo[1]) & (y <= hi[1]))
            & ((z >= lo[2]) & (z <= hi[2]))
        )
        return inside


@dataclass
class _ECone(_Solid):
    """Elliptic frustum along z; hollow (a wall of ``thickness``) when thickness > 0."""

    z0: float
    z1: float
    c0: FloatArray
    c1: FloatArray
    r0: FloatArray
    r1: FloatArray
    thickness: float = 0.0

    def bbox(self, grow: float) -> tuple[FloatArray, FloatArray]:
        rmax = np.maximum(self.r0, self.r1) + grow
        lo_xy = np.minimum(self.c0 - rmax, self.c1 - rmax)
        hi_xy = np.maximum(self.c0 + rmax, self.c1 + rmax)
        return (
            np.array([lo_xy[0], lo_xy[1], self.z0 - grow]),
            np.array([hi_xy[0], hi_xy[1], self.z1 + grow]),
        )

    def inside(self, x: FloatArray, y: FloatArray, z: FloatArray, grow: float) -> BoolMask:
        f = np.clip((z - self.z0) / (self.z1 - self.z0), 0.0, 1.0)
        cx = self.c0[0] + f * (self.c1[0] - self.c0[0])
        cy = self.c0[1] + f * (self.c1[1] - self.c0[1])
        rx = self.r0[0] + f * (self.r1[0] - self.r0[0])
        ry = self.r0[1] + f * (self.r1[1] - self.r0[1])
        inz = (z >= self.z0 - grow) & (z <= self.z1 + grow)
        q = ((x - cx) / (rx + grow)) ** 2 + ((y - cy) / (ry + grow)) ** 2
        out: BoolMask = (q <= 1.0) & inz
        if self.thickness > 0:
            t = self.thickness + grow
            ix, iy = np.maximum(rx + grow - t, 1e-3), np.maximum(ry + grow - t, 1e-3)
            out &= ((x - cx) / ix) ** 2 + ((y - cy) / iy) ** 2 > 1.0
        return out


@dataclass
class _Capsule(_Solid):
    """Segment a-b swept by a sphere whose radius varies linearly from ra to rb."""

    a: FloatArray
    b: FloatArray
    ra: float
    rb: float

    def bbox(self, grow: float) -> tuple[FloatArray, FloatArray]:
        r = max(self.ra, self.rb) + grow
        return np.minimum(self.a, self.b) - r, np.maximum(self.a, self.b) + r

    def inside(self, x: FloatArray, y: FloatArray, z: FloatArray, grow: float) -> BoolMask:
        d = self.b - self.a
        l2 = float(d @ d)
        px, py, pz = x - self.a[0], y - self.a[1], z - self.a[2]
        t: FloatArray | float
        if l2 <= 1e-12:
            t = 0.0
            qx, qy, qz = px, py, pz
        else:
            t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / l2, 0.0, 1.0)
            qx, qy, qz = px - t * d[0], py - t * d[1], pz - t * d[2]
        r = self.ra + t * (self.rb - self.ra) + grow
        inside: BoolMask = qx * qx + qy * qy + qz * qz <= r * r
        return inside


@dataclass
class _HalfSpace(_Solid):
    """Points p with (p - point) . normal >= 0 (the side the normal points to)."""

    point: FloatArray
    normal: FloatArray

    def bbox(self, grow: float) -> None:
        return None

    def inside(self, x: FloatArray, y: FloatArray, z: FloatArray, grow: float) -> BoolMask:
        n, p = self.normal, self.point
        inside: BoolMask = (x - p[0]) * n[0] + (y - p[1]) * n[1] + (z - p[2]) * n[2] >= -grow
        return inside


def _catmull_rom(
    points: FloatArray, radii: FloatArray, step_mm: float = 6.0
) -> tuple[FloatArray, FloatArray]:
    """Resample a centreline through ``points`` as a Catmull-Rom spline (radii linear)."""
    if len(points) < 3:
        return points, radii
    ext = np.vstack([2 * points[0] - points[1], points, 2 * points[-1] - points[-2]])
    out_p, out_r = [points[0]], [radii[0]]
    for n in range(len(points) - 1):
        p0, p1, p2, p3 = ext[n], ext[n + 1], ext[n + 2], ext[n + 3]
        m = max(1, math.ceil(float(np.linalg.norm(p2 - p1)) / step_mm))
        for s in range(1, m + 1):
            t = s / m
            t2, t3 = t * t, t * t * t
            p = 0.5 * (
                2 * p1
                + (-p0 + p2) * t
                + (2 * p0 - 5 * p1 + 4 * p2 - p3) * t2
                + (-p0 + 3 * p1 - 3 * p2 + p3) * t3
            )
            out_p.append(p)
            out_r.append(radii[n] + t * (radii[n + 1] - radii[n]))
    return np.array(out_p), np.array(out_r)


# ============================================================================ transform


@dataclass
class _Transform:
    """Point map p -> center + scale * (anchor + fill * (p - anchor) - center) + shift.

    ``size`` multiplies radii (after the scale); ``fill_radial`` multiplies tube and
    x/y radii only (rectal filling); ``fill`` scales about ``anchor`` (bladder filling).
    """

    scale: FloatArray
    center: FloatArray
    shift: FloatArray
    size: float = 1.0
    fill: float = 1.0
    anchor: FloatArray = field(default_factory=lambda: np.zeros(3))
    fill_radial: float = 1.0

    def point(self, p: npt.ArrayLike) -> FloatArray:
        q = np.asarray(p, float)
        q = self.anchor + self.fill * (q - self.anchor)
        return self.center + self.scale * (q - self.center) + self.shift

    def radii3(self, r: npt.ArrayLike) -> FloatArray:
        f = np.array([self.fill_radial, self.fill_radial, 1.0])
        radii: FloatArray = np.asarray(r, float) * self.scale * self.size * self.fill * f
        return radii

    def radius(self, r: float) -> float:
        mean: float = float(np.prod(self.scale)) ** (1 / 3)
        return float(r) * mean * self.size * self.fill * self.fill_radial


# ============================================================================ definition values

#: A table of a parsed atlas definition (TOML). Its values may be of any TOML type; each
#: is checked by the readers below where it is used, and a wrong one raises naming its key.
_Table = Mapping[str, object]


def _table(value: object, what: str) -> _Table:
    if not isinstance(value, Mapping):
        raise RtplanError(f"{what} must be a table, got {value!r}")
    return value


def _tables(value: object, what: str) -> list[_Table]:
    """An array of tables (``[[...]]`` or ``[{...}, ...]``)."""
    if not isinstance(value, list):
        raise RtplanError(f"{what} must be a list of tables, got {value!r}")
    return [_table(v, f"{what} entry") for v in value]


def _require(spec: _Table, key: str, where: str) -> object:
    if key not in spec:
        raise RtplanError(f"{where}: missing {key!r}")
    return spec[key]


def _number(value: object, what: str) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RtplanError(f"{what} must be a number, got {value!r}")
    return float(value)


def _optional_number(spec: _Table, key: str, where: str) -> float | None:
    value = spec.get(key)
    return None if value is None else _number(value, f"{where} {key}")


def _string(value: object, what: str) -> str:
    if not isinstance(value, str):
        raise RtplanError(f"{what} must be a string, got {value!r}")
    return value


def _strings(value: object, what: str) -> list[str]:
    if not isinstance(value, list):
        raise RtplanError(f"{what} must be a list of strings, got {value!r}")
    return [_string(v, f"{what} entry") for v in value]


def _flag(value: object, what: str) -> bool:
    if not isinstance(value, bool):
        raise RtplanError(f"{what} must be true or false, got {value!r}")
    return value


def _numbers(value: object, what: str, *, expected: str) -> FloatArray:
    """``value`` as a float array; strings, bools and ragged lists raise naming ``what``."""
    try:
        a = np.asarray(value)
    except ValueError:  # a ragged nested list
        raise RtplanError(f"{what} must be {expected}, got {value!r}") from None
    if a.dtype.kind not in "iuf":
        raise RtplanError(f"{what} must be {expected}, got {value!r}")
    return a.astype(float)


def _vec(value: object, n: int, what: str) -> FloatArray:
    expected = f"{n} finite numbers"
    a = _numbers(value, what, expected=expected).reshape(-1)
    if a.shape != (n,) or not np.all(np.isfinite(a)):
        raise RtplanError(f"{what} must be {expected}, got {value!r}")
    return a


def _ints(value: object, n: int, what: str) -> list[int]:
    if not isinstance(value, list) or len(value) != n or not all(is_integer(v) for v in value):
        raise RtplanError(f"{what} must be {n} integers, got {value!r}")
    return [int(v) for v in value]


_SHAPE_KEYS: dict[str, frozenset[str]] = {
    "ellipsoid": frozenset({"center", "radii", "rotate_deg"}),
    "box": frozenset({"min", "max"}),
    "econe": frozenset({"z", "center", "radii", "center_top", "radii_top", "thickness"}),
    "tube": frozenset({"points", "radius", "radii", "spline"}),
    "halfspace": frozenset({"point", "normal"}),
}
_STRUCTURE_KEYS = frozenset(
    {
        "name",
        "role",
        "export",
        "group",
        "filling",
        "hu",
        "core_hu",
        "core_depth_mm",
        "shapes",
        "exclude",
        "within",
        "description",
    }
)


def _ellipsoid_solids(spec: _Table, tf: _Transform, w: str) -> list[_Solid]:
    rot = spec.get("rotate_deg")
    c = tf.point(_vec(_require(spec, "center", w), 3, f"{w} center"))
    r = _vec(_require(spec, "radii", w), 3, f"{w} radii")
    if rot is None:
        return [_Ellipsoid(c, tf.radii3(r))]
    mean = np.full(3, tf.radius(1.0))
    return [_Ellipsoid(c, r * mean, _rotation(_vec(rot, 3, f"{w} rotate_deg")))]


def _box_solids(spec: _Table, tf: _Transform, w: str) -> list[_Solid]:
    lo = _vec(_require(spec, "min", w), 3, f"{w} min")
    hi = _vec(_require(spec, "max", w), 3, f"{w} max")
    mid = tf.point((lo + hi) / 2)
    half = tf.radii3((hi - lo) / 2) / np.array([tf.fill_radial, tf.fill_radial, 1.0])
    return [_Box(mid - half, mid + half)]


def _econe_solids(spec: _Table, tf: _Transform, w: str) -> list[_Solid]:
    z0, z1 = (float(v) for v in _vec(_require(spec, "z", w), 2, f"{w} z"))
    c0 = _vec(_require(spec, "center", w), 2, f"{w} center")
    c1 = _vec(spec.get("center_top", c0), 2, f"{w} center_top")
    r0 = _vec(_require(spec, "radii", w), 2, f"{w} radii")
    r1 = _vec(spec.get("radii_top", r0), 2, f"{w} radii_top")
    p0, p1 = tf.point([*c0, z0]), tf.point([*c1, z1])
    rr0, rr1 = tf.radii3([*r0, 1.0])[:2], tf.radii3([*r1, 1.0])[:2]
    thick = tf.radius(_number(spec.get("thickness", 0.0), f"{w} thickness"))
    return [_ECone(float(p0[2]), float(p1[2]), p0[:2], p1[:2], rr0, rr1, thick)]


def _tube_solids(spec: _Table, tf: _Transform, w: str) -> list[_Solid]:
    pts = _numbers(
        _require(spec, "points", w), f"{w} points", expected="a list of at least two [x, y, z]"
    )
    if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) < 2:
        raise RtplanError(f"{w} points must be a list of at least two [x, y, z]")
    rad = spec.get("radii", spec.get("radius"))
    if rad is None:
        raise RtplanError(f"{w}: missing 'radius' (or 'radii', one per point)")
    expected = f"a number or {len(pts)} numbers (one per point)"
    radii_given = _numbers(rad, f"{w} radii", expected=expected)
    if radii_given.ndim > 1 or radii_given.size not in (1, len(pts)):
        raise RtplanError(f"{w} radii must be {expected}, got {rad!r}")
    radii = np.broadcast_to(radii_given, (len(pts),)).copy()
    if _flag(spec.get("spline", True), f"{w} spline"):
        pts, radii = _catmull_rom(pts, radii)
    tp = np.array([tf.point(p) for p in pts])
    tr = [tf.radius(r) for r in radii]
    return [_Capsule(tp[n], tp[n + 1], tr[n], tr[n + 1]) for n in range(len(tp) - 1)]


def _halfspace_solids(spec: _Table, tf: _Transform, w: str) -> list[_Solid]:
    n = _vec(_require(spec, "normal", w), 3, f"{w} normal") / tf.scale
    point = tf.point(_vec(_require(spec, "point", w), 3, f"{w} point"))
    return [_HalfSpace(point, n / np.linalg.norm(n))]


_SOLID_BUILDERS = {
    "ellipsoid": _ellipsoid_solids,
    "box": _box_solids,
    "econe": _econe_solids,
    "tube": _tube_solids,
    "halfspace": _halfspace_solids,
}


def _make_solids(spec: _Table, tf: _Transform, where: str) -> list[_Solid]:
    """Elementary solids of one shape entry of an atlas definition, transformed."""
    kind = spec.get("type")
    if not isinstance(kind, str) or kind not in _SOLID_BUILDERS:
        raise RtplanError(
            f"{where}: unknown shape type {kind!r}; expected ellipsoid, box, econe, tube or "
            "halfspace"
        )
    w = f"{where} shape type={kind!r}"
    unknown = set(spec) - _SHAPE_KEYS[kind] - {"type", "op"}
    if unknown:
        raise RtplanError(
            f"{w}: unknown keys {sorted(unknown)}; expected {sorted(_SHAPE_KEYS[kind])}"
        )
    return _SOLID_BUILDERS[kind](spec, tf, w)


# ============================================================================ rasteriser


class _Raster:
    """Index boxes and coordinates of an identity-direction grid."""

    def __init__(self, grid: ImageGrid) -> None:
        if not grid.is_standard_orientation:
            raise GeometryError(
                f"an atlas is built on a grid with the identity direction, got {grid.describe()} "
                f"with direction {grid.direction}"
            )
        self.grid = grid
        self.z, self.y, self.x = grid.axis_coordinates_mm()
        self._o = [float(self.z[0]), float(self.y[0]), float(self.x[0])]
        self._s = [float(v) for v in grid.spacing_mm]
        self._n = [int(v) for v in grid.shape]

    def box(self, lo_xyz: FloatArray, hi_xyz: FloatArray) -> tuple[_Index, _Index]:
        """Index range [start, stop) (k, j, i) of voxel centres inside an LPS box."""
        start, stop = [], []
        for axis, c in ((0, 2), (1, 1), (2, 0)):  # (array axis, LPS component)
            o, sp, n = self._o[axis], self._s[axis], self._n[axis]
            a = math.ceil((float(lo_xyz[c]) - o) / sp - 1e-9)
            b = math.floor((float(hi_xyz[c]) - o) / sp + 1e-9) + 1
            start.append(min(max(a, 0), n))
            stop.append(min(max(b, 0), n))
        return np.array(start, np.int64), np.array(stop, np.int64)

    def coords(self, start: _Index, stop: _Index) -> tuple[FloatArray, FloatArray, FloatArray]:
        """Broadcastable x, y, z (LPS mm) of the voxel centres of an index box."""
        return (
            self.x[None, None, start[2] : stop[2]],
            self.y[None, start[1] : stop[1], None],
            self.z[start[0] : stop[0], None, None],
        )


@dataclass
class _Local:
    """A mask stored inside an index box: ``mask`` covers [start, start + shape)."""

    start: _Index
    mask: BoolMask

    @property
    def stop(self) -> _Index:
        stop: _Index = self.start + np.array(self.mask.shape)
        return stop


def _overlap(a0: _Index, a1: _Index, b0: _Index, b1: _Index) -> tuple[_Index, _Index] | None:
    """Intersection ``(lo, hi)`` of two index boxes, or ``None`` when it is empty."""
    lo = [max(int(a), int(b)) for a, b in zip(a0, b0)]
    hi = [min(int(a), int(b)) for a, b in zip(a1, b1)]
    if any(h <= low for low, h in zip(lo, hi)):
        return None
    return np.array(lo, np.int64), np.array(hi, np.int64)


def _sl(box: tuple[_Index, _Index], origin: _Index) -> tuple[slice, slice, slice]:
    """Slices of the index box ``(lo, hi)`` in an array whose first voxel is ``origin``."""
    (lk, lj, li), (hk, hj, hi), (ok, oj, oi) = (
        (int(v) for v in box[0]),
        (int(v) for v in box[1]),
        (int(v) for v in origin),
    )
    return slice(lk - ok, hk - ok), slice(lj - oj, hj - oj), slice(li - oi, hi - oi)


def _union_into(
    target: BoolMask, t0: _Index, solids: Sequence[_Solid], ras: _Raster, grow: float
) -> None:
    """OR the solids (finite ones) into ``target`` covering the index box starting at t0."""
    t1 = t0 + np.array(target.shape)
    for s in solids:
        bb = s.bbox(grow)
        if bb is None:
            target[...] |= s.inside(*ras.coords(t0, t1), grow)
            continue
        b0, b1 = ras.box(*bb)
        ov = _overlap(b0, b1, t0, t1)
        if ov is None:
            continue
        target[_sl(ov, t0)] |= s.inside(*ras.coords(*ov), grow)


@dataclass
class _StructDef:
    """One ``[[structure]]`` entry of a definition, its solids transformed."""

    name: str
    role: str
    export: bool
    group: str
    hu: float | None
    core_hu: float | None
    core_depth_mm: float
    adds: list[_Solid]
    subtracts: list[_Solid]
    intersects: list[list[_Solid]]
    within: list[str]
    exclude: list[tuple[str, float]]
    surfaces: list[tuple[_Solid, _Solid]] = field(default_factory=list)


def _build_masks(defs: Sequence[_StructDef], ras: _Raster) -> dict[str, _Local | None]:
    """Every structure's mask in its own index box, in definition order."""
    masks: dict[str, _Local | None] = {}
    by_name = {d.name: d for d in defs}
    for d in defs:
        masks[d.name] = _build_mask(d, ras, masks, by_name)
    return masks


def _build_mask(
    d: _StructDef,
    ras: _Raster,
    masks: Mapping[str, _Local | None],
    by_name: Mapping[str, _StructDef],
) -> _Local | None:
    """The mask of one structure: its solids, then ``within`` and ``exclude`` structures."""
    boxes = [ras.box(*b) for s in d.adds if (b := s.bbox(0.0)) is not None]
    if not boxes:
        return None
    t0: _Index = np.min([b[0] for b in boxes], axis=0)
    t1: _Index = np.max([b[1] for b in boxes], axis=0)
    if np.any(t1 <= t0):
        return None
    local = np.zeros(tuple(int(v) for v in t1 - t0), bool)
    _union_into(local, t0, d.adds, ras, 0.0)
    if d.subtracts:
        sub = np.zeros_like(local)
        _union_into(sub, t0, d.subtracts, ras, 0.0)
        local &= ~sub
    for group in d.intersects:
        keep = np.zeros_like(local)
        _union_into(keep, t0, group, ras, 0.0)
        local &= keep
    for other_name in d.within:
        local &= _within(masks.get(other_name), t0, t1)
    for other_name, gap in d.exclude:
        _exclude(local, t0, t1, masks.get(other_name), by_name[other_name], ras, gap)
    return _Local(t0, local) if local.any() else None


def _within(other: _Local | None, t0: _Index, t1: _Index) -> BoolMask:
    """The part of ``other`` inside the index box [t0, t1) (all False when it is absent)."""
    keep = np.zeros(tuple(int(v) for v in t1 - t0), bool)
    if other is not None:
        ov = _overlap(t0, t1, other.start, other.stop)
        if ov is not None:
            keep[_sl(ov, t0)] = other.mask[_sl(ov, other.start)]
    return keep


def _exclude(
    local: BoolMask,
    t0: _Index,
    t1: _Index,
    other: _Local | None,
    other_def: _StructDef,
    ras: _Raster,
    gap: float,
) -> None:
    """Remove ``other`` (and its ``add`` solids grown by ``gap`` mm) from ``local``."""
    if other is None:
        return
    if gap > 0:
        grown = np.zeros_like(local)
        _union_into(grown, t0, other_def.adds, ras, gap)
        local &= ~grown
    ov = _overlap(t0, t1, other.start, other.stop)
    if ov is not None:
        local[_sl(ov, t0)] &= ~other.mask[_sl(ov, other.start)]


# ============================================================================ definitions


def _atlas_root() -> Traversable:
    return importlib.resources.files("rtplan.atlases")


def list_atlases() -> list[str]:
    """Names of the atlases shipped with rtplan (folders with an ``atlas.toml``).

    Returns
    -------
    list of str
        Sorted names, e.g. ``["male_pelvis_postop"]``.
    """
    root = _atlas_root()
    return sorted(p.name for p in root.iterdir() if p.is_dir() and (p / "atlas.toml").is_file())


def _check_hashes(folder: Traversable, where: str) -> None:
    """Compare every file listed in ``hashes.json`` with its SHA-256."""
    hfile = folder / "hashes.json"
    if not hfile.is_file():
        return
    try:
        table = json.loads(hfile.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise RtplanError(f"{where}/hashes.json is not valid JSON: {exc}") from None
    if not isinstance(table, dict):
        raise RtplanError(f"{where}/hashes.json must map file names to SHA-256 digests")
    for fname, expected in table.items():
        f = folder / fname
        if not f.is_file():
            raise RtplanError(f"{where}/{fname} is listed in hashes.json but is missing")
        got = hashlib.sha256(f.read_bytes()).hexdigest()
        if got != str(expected).lower():
            raise RtplanError(
                f"{where}/{fname} failed its SHA-256 check (expected {expected}, got {got}); "
                "the atlas definition was modified or corrupted: reinstall rtplan, or after a "
                "deliberate edit update hashes.json"
            )


def _read_definition(folder: Traversable, where: str) -> _Table:
    _check_hashes(folder, where)
    try:
        return tomllib.loads((folder / "atlas.toml").read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise RtplanError(f"{where}/atlas.toml is not valid TOML: {exc}") from None


@dataclass
class _Variation:
    """Anatomical variation of one build: scale, per-group shifts and sizes, fillings."""

    scale: FloatArray
    shifts: dict[str, FloatArray]
    sizes: dict[str, float]
    bladder_filling: float
    rectal_filling: float
    drawn: dict[str, object]


@dataclass
class _ClippedNormal:
    """Standard normal draws clipped to +-``clip_sd``."""

    rng: np.random.Generator
    clip_sd: float

    def vector(self) -> FloatArray:
        """Three draws."""
        return np.clip(self.rng.standard_normal(3), -self.clip_sd, self.clip_sd)

    def scalar(self) -> float:
        """One draw."""
        return float(np.clip(self.rng.standard_normal(), -self.clip_sd, self.clip_sd))


def _check_variation(
    scale: float | Sequence[float], bladder_filling: float, rectal_filling: float
) -> FloatArray:
    """The per-axis scale, after checking the scale and fillings are in range."""
    s = np.broadcast_to(np.asarray(scale, float), (3,)).copy()
    if not np.all(np.isfinite(s)) or np.any(s < 0.8) or np.any(s > 1.25):
        raise InvalidInputError(f"scale must lie in [0.8, 1.25] (per axis x, y, z), got {scale!r}")
    for label, v in (("bladder_filling", bladder_filling), ("rectal_filling", rectal_filling)):
        if not math.isfinite(v) or not 0.3 <= v <= 2.5:
            raise InvalidInputError(
                f"{label} must lie in [0.3, 2.5] (1 = the atlas's own), got {v!r}"
            )
    return s


def _draw_variation(
    meta: _Table,
    groups: Sequence[str],
    *,
    scale: float | Sequence[float],
    bladder_filling: float,
    rectal_filling: float,
    seed: int | None,
    where: str,
) -> _Variation:
    """The variation asked for; with a seed, a random variant drawn from ``[variation]``."""
    s = _check_variation(scale, bladder_filling, rectal_filling)
    var = _Variation(
        scale=s,
        shifts={g: np.zeros(3) for g in groups},
        sizes=dict.fromkeys(groups, 1.0),
        bladder_filling=float(bladder_filling),
        rectal_filling=float(rectal_filling),
        drawn={},
    )
    if seed is not None:
        spreads = _table(meta.get("variation", {}), f"{where} [variation]")
        _draw_random(var, groups, spreads, seed, f"{where} [variation]")
    return var


def _draw_random(
    var: _Variation, groups: Sequence[str], spreads: _Table, seed: int, where: str
) -> None:
    """Draw a random variant into ``var`` (the draw order is fixed: seeds stay valid)."""

    def sd(key: str, default: float) -> float:
        return _number(spreads.get(key, default), f"{where} {key}")

    normal = _ClippedNormal(np.random.default_rng(seed), sd("clip_sd", 2.0))
    aniso = 1.0 + sd("scale_sd", 0.03) * normal.vector()
    var.scale = var.scale * aniso
    for g in groups:  # sorted for determinism
        var.shifts[g] = sd("translate_sd_mm", 1.5) * normal.vector()
        var.sizes[g] = 1.0 + sd("size_sd", 0.04) * normal.scalar()
    var.bladder_filling *= math.exp(sd("bladder_filling_sd", 0.15) * normal.scalar())
    var.rectal_filling *= math.exp(sd("rectal_filling_sd", 0.1) * normal.scalar())
    for g in set(_strings(spreads.get("fixed_groups", []), f"{where} fixed_groups")):
        var.shifts[g] = np.zeros(3)
        var.sizes[g] = 1.0
    var.drawn = {
        "anisotropic_scale": aniso.round(4).tolist(),
        "group_shift_mm": {g: var.shifts[g].round(2).tolist() for g in groups},
        "group_size": {g: round(var.sizes[g], 4) for g in groups},
    }


def _list(value: object, what: str) -> list[object]:
    if not isinstance(value, list):
        raise RtplanError(f"{what} must be a list, got {value!r}")
    return value


def _parse(defn: _Table, var: _Variation, where: str) -> tuple[list[_StructDef], dict[str, Vec3]]:
    """The structures (solids transformed by ``var``) and landmarks of a definition."""
    meta = _table(defn.get("atlas", {}), f"{where} [atlas]")
    center = _vec(meta.get("scale_center_mm", [0, 0, 0]), 3, f"{where} [atlas] scale_center_mm")
    anchors = _table(defn.get("filling", {}), f"{where} [filling]")
    entries = _tables(defn.get("structure", []), f"{where} [[structure]]")
    if not entries:
        raise RtplanError(f"{where}: no [[structure]] entries")
    out: list[_StructDef] = []
    seen: set[str] = set()
    for e in entries:
        d = _parse_structure(e, var, center, anchors, seen, where)
        out.append(d)
        seen.add(d.name)
    landmarks = _parse_landmarks(
        _table(defn.get("landmarks", {}), f"{where} [landmarks]"), var, center, out, where
    )
    return out, landmarks


def _parse_structure(
    e: _Table,
    var: _Variation,
    center: FloatArray,
    anchors: _Table,
    seen: set[str],
    where: str,
) -> _StructDef:
    """One ``[[structure]]`` entry; ``seen`` holds the names defined before it."""
    name = e.get("name")
    if not isinstance(name, str):
        raise RtplanError(f"{where}: a [[structure]] entry has no name")
    w = f"{where} structure {name!r}"
    unknown = set(e) - _STRUCTURE_KEYS
    if unknown:
        raise RtplanError(
            f"{w}: unknown keys {sorted(unknown)}; expected {sorted(_STRUCTURE_KEYS)}"
        )
    if name in seen:
        raise RtplanError(f"{w} is defined twice")
    group = _string(e.get("group", "body"), f"{w} group")
    tf = _structure_transform(e.get("filling"), var, center, anchors, group, w, where)
    adds, subs, ints = _parse_shapes(e, tf, w)
    surfaces = _surface_solids(e, tf, w)
    exclude = _parse_exclude(e, seen, w)
    within = _strings(e.get("within", []), f"{w} within")
    for wname in within:
        if wname not in seen:
            raise RtplanError(f"{w}: within {wname!r}, which is not defined before it")
    return _StructDef(
        name=name,
        role=_string(e.get("role", "organ"), f"{w} role"),
        export=_flag(e.get("export", True), f"{w} export"),
        group=group,
        hu=_optional_number(e, "hu", w),
        core_hu=_optional_number(e, "core_hu", w),
        core_depth_mm=_number(e.get("core_depth_mm", 0.0), f"{w} core_depth_mm"),
        adds=adds,
        subtracts=subs,
        intersects=ints,
        within=within,
        exclude=exclude,
        surfaces=surfaces,
    )


def _structure_transform(
    filling: object,
    var: _Variation,
    center: FloatArray,
    anchors: _Table,
    group: str,
    w: str,
    where: str,
) -> _Transform:
    """The transform of a structure's solids: its group's shift and size, and its filling."""
    fill, fill_radial = 1.0, 1.0
    anchor = np.zeros(3)
    if filling == "bladder":
        fill = var.bladder_filling ** (1 / 3)
        anchor = _vec(anchors.get("bladder_anchor_mm", [0, 0, 0]), 3, f"{where} anchor")
    elif filling == "rectal":
        fill_radial = var.rectal_filling**0.5
    elif filling is not None:
        raise RtplanError(f"{w}: filling must be 'bladder' or 'rectal', got {filling!r}")
    return _Transform(
        scale=var.scale,
        center=center,
        shift=var.shifts.get(group, np.zeros(3)),
        size=var.sizes.get(group, 1.0),
        fill=fill,
        anchor=anchor,
        fill_radial=fill_radial,
    )


def _parse_shapes(
    e: _Table, tf: _Transform, w: str
) -> tuple[list[_Solid], list[_Solid], list[list[_Solid]]]:
    """The ``add``, ``subtract`` and ``intersect`` solids of a structure."""
    adds: list[_Solid] = []
    subs: list[_Solid] = []
    ints: list[list[_Solid]] = []
    for spec in _tables(e.get("shapes", []), f"{w} shapes"):
        op = spec.get("op", "add")
        solids = _make_solids(spec, tf, w)
        if op == "add":
            adds += solids
        elif op == "subtract":
            subs += solids
        elif op == "intersect":
            ints.append(solids)
        else:
            raise RtplanError(f"{w}: op must be add, subtract or intersect, got {op!r}")
    return adds, subs, ints


def _parse_exclude(e: _Table, seen: set[str], w: str) -> list[tuple[str, float]]:
    """``(name, gap_mm)`` of the structures excluded from a structure."""
    exclude = []
    for x in _list(e.get("exclude", []), f"{w} exclude"):
        if isinstance(x, str):
            xname, gap = x, 0.0
        else:
            entry = _table(x, f"{w} exclude entry")
            xname = _string(_require(entry, "name", f"{w} exclude"), f"{w} exclude name")
            gap = _number(entry.get("gap_mm", 0), f"{w} exclude gap_mm")
        if xname not in seen:
            raise RtplanError(f"{w}: excludes {xname!r}, which is not defined before it")
        exclude.append((xname, gap))
    return exclude


def _surface_solids(e: _Table, tf: _Transform, w: str) -> list[tuple[_Solid, _Solid]]:
    """``(as defined, as built)`` pairs of a structure's added ellipsoids and tubes.

    A landmark defined on the surface of one of them (the top of the femoral head) is
    kept on that surface in a variant (:func:`_follow_structure`).
    """
    identity = _Transform(scale=np.ones(3), center=np.zeros(3), shift=np.zeros(3))
    pairs: list[tuple[_Solid, _Solid]] = []
    for spec in _tables(e.get("shapes", []), f"{w} shapes"):
        if spec.get("op", "add") != "add" or spec.get("type") not in ("ellipsoid", "tube"):
            continue
        pairs += zip(_make_solids(spec, identity, w), _make_solids(spec, tf, w))
    return pairs


#: A landmark lies on a solid's surface when it is this close to it in the definition (mm).
_SURFACE_TOLERANCE_MM = 1e-6


def _surface_point(defined: _Solid, built: _Solid, p: FloatArray) -> FloatArray | None:
    """Where the definition point ``p`` on ``defined``'s surface lies on ``built``'s.

    Ellipsoid: the same point in the ellipsoid's own normalised coordinates. Tube: the
    same position along the segment, at the built radius, in the same direction (so
    the top of a tube's cap stays its top). ``None`` when ``p`` is not on ``defined``'s
    surface.
    """
    if isinstance(defined, _Ellipsoid) and isinstance(built, _Ellipsoid):
        rot = np.eye(3) if defined.rot is None else defined.rot
        u = (rot.T @ (p - defined.center)) / defined.radii
        if abs(float(u @ u) - 1.0) > _SURFACE_TOLERANCE_MM / float(defined.radii.max()):
            return None
        built_rot = np.eye(3) if built.rot is None else built.rot
        moved: FloatArray = built.center + built_rot @ (built.radii * u)
        return moved
    if isinstance(defined, _Capsule) and isinstance(built, _Capsule):
        d = defined.b - defined.a
        t = float(np.clip((p - defined.a) @ d / max(float(d @ d), 1e-12), 0.0, 1.0))
        offset = p - (defined.a + t * d)
        radius = defined.ra + t * (defined.rb - defined.ra)
        if abs(float(np.linalg.norm(offset)) - radius) > _SURFACE_TOLERANCE_MM or radius <= 0:
            return None
        direction = offset / radius
        r_built = built.ra + t * (built.rb - built.ra)
        on_built: FloatArray = built.a + t * (built.b - built.a) + r_built * direction
        return on_built
    return None


def _follow_structure(
    p: FloatArray, moved: FloatArray, group: str, defs: Sequence[_StructDef]
) -> FloatArray:
    """A landmark on the surface of a solid of its group follows that solid.

    ``p`` is the point as defined and ``moved`` where the group's shift and the scale
    put it. A definition point (the top of the femoral head, of the penile bulb, of the
    symphysis) lies on a solid's surface; it stays there when the variant also changes
    the solid's size, which the group's shift alone would not follow.
    """
    for d in defs:
        if d.group != group:
            continue
        for defined, built in d.surfaces:
            q = _surface_point(defined, built, p)
            if q is not None:
                return q
    return moved


def _landmark_groups(defn: _Table, where: str) -> dict[str, str]:
    """The variation group of each landmark of a definition."""
    table = _table(defn.get("landmarks", {}), f"{where} [landmarks]")
    return {
        key: _string(
            _table(value, f"{where} landmark {key!r}").get("group", "body"),
            f"{where} landmark {key!r} group",
        )
        for key, value in table.items()
    }


def _parse_landmarks(
    table: _Table,
    var: _Variation,
    center: FloatArray,
    defs: Sequence[_StructDef],
    where: str,
) -> dict[str, Vec3]:
    """Landmark points (LPS mm), moved with their group (and with their solid's size)."""
    landmarks: dict[str, Vec3] = {}
    for key, value in table.items():
        w = f"{where} landmark {key!r}"
        spec = _table(value, w)
        group = _string(spec.get("group", "body"), f"{w} group")
        tf = _Transform(
            scale=var.scale,
            center=center,
            shift=var.shifts.get(group, np.zeros(3)),
        )
        defined = _vec(_require(spec, "point", w), 3, w)
        p = _follow_structure(defined, tf.point(defined), group, defs)
        landmarks[key] = (float(p[0]), float(p[1]), float(p[2]))
    return landmarks


def _default_grid(
    meta: _Table,
    var: _Variation,
    *,
    spacing_mm: FloatArray | None,
    shape: Shape3 | None,
    where: str,
) -> ImageGrid:
    """The grid over the definition's field of view (which follows the scaled anatomy)."""
    w = f"{where} [atlas]"
    center = _vec(meta.get("scale_center_mm", [0, 0, 0]), 3, f"{w} scale_center_mm")
    fov = _vec(meta.get("default_fov_mm", [500.0, 500.0]), 2, f"{w} default_fov_mm")
    fov_c = _vec(meta.get("default_fov_center_mm", [0.0, 0.0]), 2, f"{w} default_fov_center_mm")
    zr = _vec(meta.get("default_z_range_mm", [-80.0, 180.0]), 2, f"{w} default_z_range_mm")
    sc = var.scale
    # the field of view follows the (scaled) anatomy
    z_lo, z_hi = center[2] + sc[2] * (zr - center[2])
    xc, yc = center[:2] + sc[:2] * (fov_c - center[:2])
    ext = np.array([z_hi - z_lo, fov[1] * sc[1], fov[0] * sc[0]])  # (z, y, x) extent
    if spacing_mm is not None:
        spacing = spacing_mm.copy()
        if shape is None:
            shp = np.ceil(ext / spacing - 1e-6).astype(int) + np.array([1, 0, 0])
        else:
            shp = np.array(shape)
    elif shape is not None:
        shp = np.array(shape)
        spacing = ext / np.maximum(shp - np.array([1, 0, 0]), 1)
    else:
        spacing = _vec(
            meta.get("default_spacing_mm", [2.5, 0.9765625, 0.9765625]),
            3,
            f"{w} default_spacing_mm",
        )
        nxy = _ints(meta.get("default_shape_yx", [512, 512]), 2, f"{w} default_shape_yx")
        spacing[1:] = spacing[1:] * sc[1::-1]
        nz = math.ceil(ext[0] / spacing[0] - 1e-6) + 1
        shp = np.array([nz, nxy[0], nxy[1]])
    if np.any(shp < 1) or np.any(spacing <= 0):
        raise GeometryError(
            f"shape must be three positive ints and spacing_mm three positive mm, got "
            f"shape={shape!r}, spacing_mm={None if spacing_mm is None else spacing_mm.tolist()!r}"
        )
    zc = (z_lo + z_hi) / 2
    return ImageGrid(
        shape=(int(shp[0]), int(shp[1]), int(shp[2])),
        spacing_mm=(float(spacing[0]), float(spacing[1]), float(spacing[2])),
        origin_mm=(
            float(xc - spacing[2] * (shp[2] - 1) / 2),
            float(yc - spacing[1] * (shp[1] - 1) / 2),
            float(zc - spacing[0] * (shp[0] - 1) / 2),
        ),
    )


def _ct_painter(
    defs: Sequence[_StructDef],
    masks: Mapping[str, _Local | None],
    grid: ImageGrid,
    meta: _Table,
    noise_seed: int,
    where: str,
) -> Callable[[], npt.NDArray[np.float32]]:
    """A function that paints the CT (:func:`_paint`); the ``[atlas]`` values are read now."""
    air_hu = _number(meta.get("air_hu", -1000.0), f"{where} [atlas] air_hu")
    noise_hu = _number(meta.get("noise_hu", 0.0), f"{where} [atlas] noise_hu")
    return functools.partial(_paint, tuple(defs), dict(masks), grid, air_hu, noise_hu, noise_seed)


def _paint(
    defs: Sequence[_StructDef],
    masks: Mapping[str, _Local | None],
    grid: ImageGrid,
    air_hu: float,
    noise_hu: float,
    noise_seed: int,
) -> npt.NDArray[np.float32]:
    """The CT (HU): air, each structure's ``hu`` (and ``core_hu``) in order, then noise."""
    ct = np.full(grid.shape, air_hu, np.float32)
    sp = np.array(grid.spacing_mm)
    for d in defs:
        loc = masks.get(d.name)
        if loc is None or d.hu is None:
            continue
        region = ct[_sl((loc.start, loc.stop), np.zeros(3, np.int64))]  # a view of ct
        _paint_structure(region, loc.mask, d.hu, d.core_hu, d.core_depth_mm, sp)
    if noise_hu > 0:
        _add_noise(ct, noise_hu, noise_seed)
    np.clip(ct, -1024.0, 3071.0, out=ct)
    return ct


def _paint_structure(
    region: npt.NDArray[np.float32],
    mask: BoolMask,
    hu: float,
    core_hu: float | None,
    core_depth_mm: float,
    spacing_mm: FloatArray,
) -> None:
    """Paint ``hu`` on ``mask`` in ``region`` (in place), and ``core_hu`` deeper inside."""
    np.putmask(region, mask, np.float32(hu))
    if core_hu is not None and core_depth_mm > 0:
        n = np.rint(core_depth_mm / spacing_mm).astype(int)
        core = (
            ndimage.minimum_filter(
                mask.view(np.uint8), size=tuple(2 * n + 1), mode="constant", cval=0
            ).astype(bool)
            if np.any(n > 0)
            else mask
        )
        np.putmask(region, core, np.float32(core_hu))


def _add_noise(ct: npt.NDArray[np.float32], noise_hu: float, seed: int) -> None:
    """Add seeded Gaussian noise (SD ``noise_hu``) to ``ct`` in place.

    A block of 8 noise slices, reused with a different in-plane roll per slice.
    """
    rng = np.random.default_rng(seed)
    nb = min(8, ct.shape[0])
    block = rng.standard_normal((nb, *ct.shape[1:]), dtype=np.float32)
    block *= np.float32(noise_hu)
    ny, nx = ct.shape[1:]
    for k in range(ct.shape[0]):
        shift = ((k // nb) * 37 % ny, (k // nb) * 61 % nx)
        ct[k] += np.roll(block[k % nb], shift, axis=(0, 1)) if k >= nb else block[k]


def _structure_from_local(name: str, loc: _Local | None, grid: ImageGrid, role: str) -> Structure:
    """A Structure from a mask known only inside its index box (no grid-sized array)."""
    if loc is None:
        return Structure.from_cropped(name, np.zeros((1, 1, 1), bool), (0, 0, 0), grid, role=role)
    k, j, i = (int(v) for v in loc.start)
    return Structure.from_cropped(name, loc.mask, (k, j, i), grid, role=role)


@dataclass(frozen=True)
class _BuildOptions:
    """The arguments of :func:`load_atlas` that shape a parametric build, checked."""

    spacing_mm: FloatArray | None  # shape (3,)
    shape: Shape3 | None
    grid: ImageGrid | None
    scale: float | Sequence[float]
    bladder_filling: float
    rectal_filling: float
    seed: int | None
    validate: bool

    def asked(self) -> list[str]:
        """Names of the options given a value other than their default."""
        asked = {
            "spacing_mm": self.spacing_mm is not None,
            "shape": self.shape is not None,
            "grid": self.grid is not None,
            "scale": bool(np.any(np.asarray(self.scale, float) != 1.0)),
            "bladder_filling": self.bladder_filling != 1.0,
            "rectal_filling": self.rectal_filling != 1.0,
            "seed": self.seed is not None,
        }
        return [k for k, v in asked.items() if v]


def _build_parametric(folder: Traversable, where: str, name: str, opts: _BuildOptions) -> Atlas:
    """Rasterise the definition in ``folder`` with the variation and grid of ``opts``."""
    defn = _read_definition(folder, where)
    meta = _table(defn.get("atlas", {}), f"{where} [atlas]")
    entries = _tables(defn.get("structure", []), f"{where} [[structure]]")
    groups = sorted({_string(e.get("group", "body"), f"{where} group") for e in entries})
    var = _draw_variation(
        meta,
        groups,
        scale=opts.scale,
        bladder_filling=opts.bladder_filling,
        rectal_filling=opts.rectal_filling,
        seed=opts.seed,
        where=where,
    )
    defs, landmarks = _parse(defn, var, where)
    grid = opts.grid
    if grid is None:
        grid = _default_grid(meta, var, spacing_mm=opts.spacing_mm, shape=opts.shape, where=where)
    masks = _build_masks(defs, _Raster(grid))
    seed = 0 if opts.seed is None else int(opts.seed)
    paint = _ct_painter(defs, masks, grid, meta, seed, where)  # painted when first read
    structures = StructureSet(grid=grid)
    for d in defs:
        if d.export:
            structures.add(_structure_from_local(d.name, masks.get(d.name), grid, d.role))
    params = _provenance(opts, var)
    atlas = Atlas._painted_on_read(
        paint,
        name=name,
        grid=grid,
        structures=structures,
        landmarks=landmarks,
        source=f"{where}/atlas.toml",
        parameters=params,
        variation_groups={
            **{d.name: d.group for d in defs if d.export},
            **_landmark_groups(defn, where),
        },
    )
    if opts.validate:
        relations = _table(defn.get("relations", {}), f"{where} [relations]")
        problems = validate_anatomy(atlas, relations=relations)
        if problems:
            raise GeometryError(
                f"atlas {name!r} built with {params} is not anatomically valid: "
                + "; ".join(problems)
            )
    return atlas


def _provenance(opts: _BuildOptions, var: _Variation) -> dict[str, object]:
    """The build parameters recorded in :attr:`Atlas.parameters`."""
    return {
        "scale": np.broadcast_to(np.asarray(opts.scale, float), (3,)).tolist(),
        "bladder_filling": float(opts.bladder_filling),
        "rectal_filling": float(opts.rectal_filling),
        "seed": opts.seed,
        "effective_bladder_filling": round(var.bladder_filling, 4),
        "effective_rectal_filling": round(var.rectal_filling, 4),
        **var.drawn,
    }


# ============================================================================ validation


def validate_anatomy(
    atlas: Atlas, *, relations: Mapping[str, object] | None = None, check_overlaps: bool = True
) -> list[str]:
    """Check an atlas for forbidden overlaps and broken anatomical relations.

    Checks: every structure lies inside ``Body``; organs, vessels, bones and muscles do
    not overlap (except declared subsets such as ``VB_S1`` in ``Sacrum``); the relations
    listed in the definition's ``[relations]`` table hold (``anterior``, ``superior``,
    ``left_of``, ``lateral``: pairs of structure names or landmark keys compared by
    centroid or position; ``volume_cc``: allowed ranges).

    Parameters
    ----------
    atlas : Atlas
        The anatomy to check.
    relations : mapping, optional
        The ``[relations]`` table of an atlas definition: ``anterior``, ``superior``,
        ``left_of`` and ``lateral`` map to lists of ``[a, b]`` name pairs, ``volume_cc``
        to a table of ``name = [lo, hi]`` ranges in cc.
    check_overlaps : bool
        Whether to check pairwise overlaps.

    Returns
    -------
    list of str
        One sentence per problem; empty when the anatomy is valid.

    Raises
    ------
    TypeError
        When ``atlas`` is not an :class:`Atlas` or ``relations`` not a mapping.
    InvalidInputError
        When an entry of ``relations`` is not a pair of names or a volume range.
    """
    check_type(atlas, Atlas, name="atlas")
    if relations is not None:
        check_type(relations, Mapping, name="relations", expected_text="a mapping")
    check_type(check_overlaps, bool, name="check_overlaps")
    ss = atlas.structures
    present = [ss[n] for n in ss.names if not ss[n].is_empty]
    problems = _outside_body(ss, present)
    if check_overlaps:
        problems += _forbidden_overlaps(present)
    problems += _check_relations(atlas, relations or {})
    return problems


def _outside_body(ss: StructureSet, present: Sequence[Structure]) -> list[str]:
    if "Body" not in ss or ss["Body"].is_empty:
        return []
    body = ss["Body"]
    problems = []
    for s in present:
        if s.name == "Body":
            continue
        ov = s.shared_voxel_count(body)
        if ov < s.voxel_count:
            problems.append(f"{s.name} has {s.voxel_count - ov} voxels outside Body")
    return problems


def _forbidden_overlaps(present: Sequence[Structure]) -> list[str]:
    problems = []
    cand = [s for s in present if s.name not in _NOT_VALIDATED_FOR_OVERLAP]
    for n, a in enumerate(cand):
        for b in cand[n + 1 :]:
            if frozenset((a.name, b.name)) in _ALLOWED_OVERLAPS:
                continue
            ov = a.shared_voxel_count(b)
            if ov:
                problems.append(
                    f"{a.name} and {b.name} overlap by {ov * a.grid.voxel_volume_cc:.2f} cc"
                )
    return problems


def _position(atlas: Atlas, name: str) -> FloatArray | None:
    if name in atlas.landmarks:
        return np.asarray(atlas.landmarks[name], float)
    if name in atlas.structures and not atlas.structures[name].is_empty:
        return np.asarray(atlas.structures[name].centroid_mm, float)
    return None


def _sequence(value: object, what: str) -> list[object] | tuple[object, ...]:
    if not isinstance(value, (list, tuple)):
        raise InvalidInputError(f"{what} must be a list, got {value!r}")
    return value


def _name_pairs(rel: Mapping[str, object], key: str) -> list[tuple[str, str]]:
    """The ``[a, b]`` name pairs of one kind of relation."""
    pairs = []
    for item in _sequence(rel.get(key, []), f"relations {key}"):
        if not (
            isinstance(item, (list, tuple))
            and len(item) == 2
            and all(isinstance(v, str) for v in item)
        ):
            raise InvalidInputError(
                f"relations {key}: each entry must be a pair of names, got {item!r}"
            )
        pairs.append((str(item[0]), str(item[1])))
    return pairs


def _volume_ranges(rel: Mapping[str, object]) -> list[tuple[str, float, float]]:
    """``(name, lo, hi)`` of the ``volume_cc`` relations (cc)."""
    table = rel.get("volume_cc", {})
    if not isinstance(table, Mapping):
        raise InvalidInputError(f"relations volume_cc must be a table, got {table!r}")
    out = []
    for name, rng in table.items():
        lo, hi = _range(rng, f"relations volume_cc {name!r}")
        out.append((str(name), lo, hi))
    return out


def _range(value: object, what: str) -> tuple[float, float]:
    if isinstance(value, (list, tuple)) and len(value) == 2:
        lo, hi = value
        if _is_number(lo) and _is_number(hi):
            return float(lo), float(hi)
    raise InvalidInputError(f"{what} must be a range [lo, hi] in cc, got {value!r}")


def _is_number(value: object) -> TypeGuard[float]:
    """True for an int or float that is not a bool (a TOML number)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _check_relations(atlas: Atlas, rel: Mapping[str, object]) -> list[str]:
    return (
        _order_problems(atlas, rel) + _lateral_problems(atlas, rel) + _volume_problems(atlas, rel)
    )


def _order_problems(atlas: Atlas, rel: Mapping[str, object]) -> list[str]:
    """Broken ``anterior``, ``superior`` and ``left_of`` relations."""
    problems: list[str] = []
    axes = {"anterior": (1, -1), "superior": (2, 1), "left_of": (0, 1)}
    for key, (axis, sign) in axes.items():
        for a, b in _name_pairs(rel, key):
            pa, pb = _position(atlas, a), _position(atlas, b)
            if pa is None or pb is None:
                problems.append(f"relation {a} {key} {b}: {a if pa is None else b} is missing")
            elif not sign * (pa[axis] - pb[axis]) > 0:
                problems.append(
                    f"{a} is not {key.replace('_of', '')} {b} ({'xyz'[axis]} {pa[axis]:.1f} vs "
                    f"{pb[axis]:.1f} mm)"
                )
    return problems


def _lateral_problems(atlas: Atlas, rel: Mapping[str, object]) -> list[str]:
    """Broken ``lateral`` relations: a lies entirely lateral to b (on a's side)."""
    problems: list[str] = []
    for a, b in _name_pairs(rel, "lateral"):
        if a not in atlas.structures or b not in atlas.structures:
            problems.append(f"relation {a} lateral to {b}: a structure is missing")
            continue
        sa, sb = atlas.structures[a], atlas.structures[b]
        (ax0, ax1), _, _ = sa.bounds_mm
        (bx0, bx1), _, _ = sb.bounds_mm
        if (sa.centroid_mm[0] > 0 and not ax0 > bx1) or (sa.centroid_mm[0] <= 0 and not ax1 < bx0):
            problems.append(f"{a} is not entirely lateral to {b}")
    return problems


def _volume_problems(atlas: Atlas, rel: Mapping[str, object]) -> list[str]:
    """Structures missing or with a volume out of their ``volume_cc`` range."""
    problems: list[str] = []
    for a, lo, hi in _volume_ranges(rel):
        if a not in atlas.structures:
            problems.append(f"{a} is missing (volume range {lo}-{hi} cc)")
            continue
        v = atlas.structures[a].volume_cc
        if not lo <= v <= hi:
            problems.append(f"{a} volume {v:.1f} cc is outside {lo}-{hi} cc")
    return problems


# ============================================================================ landmarks


def _slice_centroid(s: Structure, which: Literal["top", "bottom"]) -> Vec3:
    """Centroid of the top (``"top"``) or bottom slice of a structure, at that slice's z."""
    assert s.bbox is not None
    local = s.cropped_mask
    superior_last = s.grid.axis_signs[0] > 0
    k = local.shape[0] - 1 if (which == "top") == superior_last else 0
    jj, ii = np.nonzero(local[k])
    idx = np.array([k + s.bbox[0].start, jj.mean() + s.bbox[1].start, ii.mean() + s.bbox[2].start])
    p = s.grid.index_to_lps(idx)
    return (float(p[0]), float(p[1]), float(p[2]))


def _cut_by_scan_edge(s: Structure, which: Literal["top", "bottom"]) -> bool:
    """True when the structure reaches the scan's top (or bottom) slice: that end is cut."""
    assert s.bbox is not None
    superior_last = s.grid.axis_signs[0] > 0
    at_last = int(s.bbox[0].stop) == s.grid.shape[0]
    at_first = int(s.bbox[0].start) == 0
    return at_last if (which == "top") == superior_last else at_first


def _dome_top_z(s: Structure) -> float:
    """The level (z, mm) of the top of a dome-shaped structure, between slice centres.

    A plane section of an ellipsoid has an area quadratic (and concave) in its level,
    zero at the top: the quadratic through the areas of the three highest slices gives
    the top as its upper root. With two slices the area is extrapolated linearly. The
    top lies between the highest slice's centre (inside) and the next one's (outside),
    so the result is kept in that interval. A top that is not dome-shaped (the area does
    not shrink upwards, or shrinks faster and faster: a flat or pointed top) is put at
    the centre of the highest slice, as the other end-slice rules do.
    """
    assert s.bbox is not None
    z_mm = s.grid.crop(s.bbox).axis_coordinates_mm()[0]
    order = np.argsort(z_mm)
    z = z_mm[order]
    areas = s.cropped_mask.sum(axis=(1, 2))[order].astype(float)
    top, slice_mm = float(z[-1]), float(s.grid.spacing_mm[0])
    if len(z) < 2 or areas[-1] >= areas[-2]:
        return top
    linear = float(areas[-1] * slice_mm / (areas[-2] - areas[-1]))
    if len(z) == 2:
        return top + min(linear, slice_mm)
    c2, c1, c0 = np.polyfit(z[-3:] - top, areas[-3:], 2)
    if c2 >= 0.0:
        return top
    roots = np.roots([c2, c1, c0])
    above = [float(r.real) for r in roots if abs(r.imag) < 1e-9 and r.real >= 0.0]
    return top + min(min(above, default=linear), slice_mm)


def _dome_top(s: Structure) -> Vec3:
    """The top of a dome-shaped structure: its top slice's centroid at :func:`_dome_top_z`."""
    x, y, _ = _slice_centroid(s, "top")
    return (x, y, _dome_top_z(s))


#: Landmarks at the top of a dome-shaped structure (sub-slice level, :func:`_dome_top_z`).
_DOME_LANDMARKS: tuple[tuple[str, str], ...] = (
    ("FemurHead_Top_L", "Femur_Head_L"),
    ("FemurHead_Top_R", "Femur_Head_R"),
    ("PenileBulb_Top", "PenileBulb"),
)

#: Landmarks at the centroid of the top or bottom slice of a structure. The top of the
#: symphysis stays on its top slice: the prostate-bed region's superior border without a
#: vas deferens landmark, and the staging thresholds around it, are set on that level.
_SLICE_LANDMARKS: tuple[tuple[str, str, Literal["top", "bottom"]], ...] = (
    ("PubicSymphysis_Top", "PubicSymphys", "top"),
    ("AorticBifurcation", "A_Aorta", "bottom"),
    ("S3_Bottom", "VB_S3", "bottom"),
    ("VUA", "Bladder", "bottom"),
)


@dataclass(frozen=True)
class _RuleLandmarks:
    """Landmarks from rules on structures, how each was found, and the ones refused.

    ``sources`` names the structures each landmark was derived from; ``refused`` gives
    the reason for each landmark whose structure is cut by the scan's edge.
    """

    points: dict[str, Vec3]
    how: dict[str, str]
    sources: dict[str, tuple[str, ...]]
    refused: dict[str, str]


def _rule_landmarks(structures: StructureSet) -> _RuleLandmarks:
    """Landmarks derived from ``structures`` by the rules of :func:`derive_landmarks`."""
    out = _RuleLandmarks({}, {}, {}, {})

    def get(name: str) -> Structure | None:
        if name in structures and not structures[name].is_empty:
            return structures[name]
        return None

    def cut(key: str, parts: Sequence[tuple[Structure, Literal["top", "bottom"]]]) -> bool:
        edges = [f"the {end} of {s.name}" for s, end in parts if _cut_by_scan_edge(s, end)]
        if edges:
            out.refused[key] = f"{' and '.join(edges)} is cut by the scan's edge"
        return bool(edges)

    for key, sname in _DOME_LANDMARKS:
        s = get(sname)
        if s is not None and not cut(key, [(s, "top")]):
            out.points[key] = _dome_top(s)
            out.how[key] = f"top of {s.name} (area profile of its top slices)"
            out.sources[key] = (s.name,)
    for key, sname, which in _SLICE_LANDMARKS:
        s = get(sname)
        if s is not None and not cut(key, [(s, which)]):
            out.points[key] = _slice_centroid(s, which)
            out.how[key] = f"centroid of the {which} slice of {s.name}"
            out.sources[key] = (s.name,)
    s1 = get("VB_S1") or get("Sacrum")
    for key, upper, lower in (
        ("L4L5_Interspace", get("VB_L4"), get("VB_L5")),
        ("L5S1_Interspace", get("VB_L5"), s1),
    ):
        if upper is None or lower is None or cut(key, [(upper, "bottom"), (lower, "top")]):
            continue
        a = np.array(_slice_centroid(upper, "bottom"))
        b = np.array(_slice_centroid(lower, "top"))
        if a[2] > b[2]:
            m = (a + b) / 2
            out.points[key] = (float(m[0]), float(m[1]), float(m[2]))
            out.how[key] = f"midway between {upper.name} and {lower.name}"
            out.sources[key] = (upper.name, lower.name)
    if s1 is not None and not cut("SacralPromontory", [(s1, "top")]):
        out.points["SacralPromontory"] = _sacral_promontory(s1)
        out.how["SacralPromontory"] = f"most anterior point of the top of {s1.name}"
        out.sources["SacralPromontory"] = (s1.name,)
    return out


def derive_landmarks(structures: StructureSet) -> dict[str, Vec3]:
    """Landmarks that can be derived from structures (LPS mm, z = the level).

    * ``FemurHead_Top_L/R``, ``PenileBulb_Top``: the top of ``Femur_Head_L/R``,
      ``PenileBulb`` (x, y: the centroid of the highest slice; z between slices, from the
      areas of the three highest slices, whose plane sections of a dome shrink
      quadratically to zero at the top);
    * ``PubicSymphysis_Top``: centroid of the highest slice of ``PubicSymphys``;
    * ``AorticBifurcation``: centroid of the lowest slice of ``A_Aorta``;
    * ``S3_Bottom``: centroid of the lowest slice of ``VB_S3``;
    * ``L4L5_Interspace`` / ``L5S1_Interspace``: midway between the lowest slice of the
      upper and the highest slice of the lower vertebra (``VB_S1``, else ``Sacrum``);
    * ``SacralPromontory``: most anterior voxel of the top slice of ``VB_S1`` (else
      ``Sacrum``) near the midline;
    * ``VUA``: centroid of the lowest slice of ``Bladder`` (the bladder neck, where the
      anastomosis lies after prostatectomy; an estimate).

    ``VasDeferens_CutEnd`` cannot be derived from the usual structures.

    A landmark is refused, with an :class:`~rtplan.errors.RtplanWarning` naming it, when
    the end of the structure it sits on is cut by the scan's edge (the structure reaches
    the first or last slice there): its true level lies outside the scan, and placing it
    at the edge would be wrong.

    Parameters
    ----------
    structures : StructureSet
        Structures with TG-263 names (synonyms accepted).

    Returns
    -------
    dict of str to (x, y, z)
        Only the landmarks whose structures are present and not cut by the scan's edge.

    Raises
    ------
    TypeError
        When ``structures`` is not a :class:`StructureSet`.
    """
    check_type(structures, StructureSet, name="structures")
    found = _rule_landmarks(structures)
    if found.refused:
        warnings.warn(_refused_text(found.refused), RtplanWarning, stacklevel=2)
    return found.points


def _refused_text(refused: Mapping[str, str]) -> str:
    parts = [f"{k} ({why})" for k, why in refused.items()]
    return (
        "landmarks not derived because their structure is cut by the scan's edge: "
        + "; ".join(parts)
        + "; give them explicitly (landmarks=) or use a scan that covers them"
    )


def _sacral_promontory(s1: Structure) -> Vec3:
    """Most anterior voxel of the top slice of ``s1`` within 10 mm of its middle column."""
    assert s1.bbox is not None
    superior_last = s1.grid.axis_signs[0] > 0
    k_local = s1.cropped_mask.shape[0] - 1 if superior_last else 0
    top = s1.cropped_mask[k_local]
    jj, ii = np.nonzero(top)
    mid = ii.mean()
    near = np.abs(ii - mid) <= max(1, round(10.0 / s1.grid.spacing_mm[2]))
    sign = s1.grid.axis_signs[1]  # +1: row index increases posteriorly
    jsel = jj[near].min() if sign > 0 else jj[near].max()
    idx = np.array([k_local + s1.bbox[0].start, jsel + s1.bbox[1].start, mid + s1.bbox[2].start])
    p = s1.grid.index_to_lps(idx.astype(float))
    return (float(p[0]), float(p[1]), float(p[2]))


def read_landmarks(path: str | os.PathLike[str]) -> dict[str, Vec3]:
    """Landmarks from a TOML file: ``name = [x, y, z]`` in LPS mm.

    The points may sit at the top level or in a ``[landmarks]`` table::

        [landmarks]
        VUA = [0.0, -40.0, -25.0]
        VasDeferens_CutEnd = [0.0, 2.0, 28.0]

    Parameters
    ----------
    path : str or Path
        The TOML file.

    Returns
    -------
    dict of str to (x, y, z)

    Raises
    ------
    InvalidInputError
        When the file is not TOML or a value is not three finite numbers.
    FileNotFoundError
        When the file does not exist.
    """
    check_type(path, PATH_TYPES, name="path", expected_text="a str or path")
    p = Path(path)
    try:
        data = tomllib.loads(p.read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise InvalidInputError(f"{p} is not valid TOML: {exc}") from exc
    table = data.get("landmarks", data)
    if not isinstance(table, dict):
        raise InvalidInputError(f"{p}: [landmarks] must be a table of name = [x, y, z]")
    return _checked_landmarks(table, where=str(p))


def _checked_landmarks(points: Mapping[str, object], *, where: str) -> dict[str, Vec3]:
    """``points`` as name -> (x, y, z) floats; an error naming ``where`` otherwise."""
    out: dict[str, Vec3] = {}
    for name, value in points.items():
        if not isinstance(name, str) or not name.strip():
            raise InvalidInputError(f"{where}: landmark names must be non-empty strings")
        ok = (
            isinstance(value, (list, tuple))
            and len(value) == 3
            and all(_is_number(v) and math.isfinite(float(v)) for v in value)
        )
        if not ok:
            raise InvalidInputError(
                f"{where}: landmark {name!r} must be three finite numbers [x, y, z] in LPS mm, "
                f"got {value!r}"
            )
        assert isinstance(value, (list, tuple))
        out[name] = (float(value[0]), float(value[1]), float(value[2]))
    return out


# ============================================================================ loaders


def load_atlas(
    name_or_path: str | os.PathLike[str] = "male_pelvis_postop",
    *,
    spacing_mm: Sequence[float] | float | None = None,
    shape: Sequence[int] | None = None,
    grid: ImageGrid | None = None,
    scale: float | Sequence[float] = 1.0,
    bladder_filling: float = 1.0,
    rectal_filling: float = 1.0,
    seed: int | None = None,
    validate: bool = True,
) -> Atlas:
    """Build a shipped atlas on a grid, or load the anatomy in a user folder.

    Parameters
    ----------
    name_or_path : str or Path
        A shipped atlas name (see :func:`list_atlases`), or a folder holding an
        ``atlas.toml`` definition, a DICOM CT series with an RTSTRUCT
        (:func:`atlas_from_dicom`), or NIfTI label maps (:func:`atlas_from_label_maps`).
    spacing_mm : float or (sz, sy, sx), optional
        Voxel size in mm. Default: the definition's (512 x 512 at 0.977 mm, 2.5 mm
        slices); given alone, the shape is chosen to cover the default field of view.
    shape : (nz, ny, nx), optional
        Grid shape; given alone, the spacing is chosen to cover the default field of view.
    grid : ImageGrid, optional
        An explicit grid (identity direction); overrides ``spacing_mm`` and ``shape``.
    scale : float or (sx, sy, sz)
        Size of the patient relative to the atlas (0.8-1.25), about the pelvis centre.
    bladder_filling : float
        Bladder volume relative to the atlas's (0.3-2.5); the bladder grows from its neck.
    rectal_filling : float
        Rectal cross-section relative to the atlas's (0.3-2.5).
    seed : int, optional
        Seed of a random anatomical variant (anisotropic scale, small shifts and size
        changes of organ groups, filling changes; spreads in the definition's
        ``[variation]`` table). ``None`` builds the atlas itself. Also seeds the CT noise.
    validate : bool
        Check overlaps and relations and raise if the anatomy is not valid.

    Returns
    -------
    Atlas

    Raises
    ------
    TypeError
        When an argument is not of the type above (e.g. a number for ``name_or_path``).
    AtlasNotFoundError
        When no shipped atlas has that name and no such folder exists.
    GeometryError
        When a variant breaks the anatomy (overlaps, relations) or the grid is invalid.
    ValueError
        On a scale or filling out of range, or variation asked of user anatomy.

    Examples
    --------
    >>> atlas = load_atlas("male_pelvis_postop", spacing_mm=(5.0, 4.0, 4.0))
    >>> sorted(atlas.missing())
    []
    """
    check_type(
        name_or_path, PATH_TYPES, name="name_or_path", expected_text="an atlas name or a path"
    )
    opts = _build_options(
        spacing_mm=spacing_mm,
        shape=shape,
        grid=grid,
        scale=scale,
        bladder_filling=bladder_filling,
        rectal_filling=rectal_filling,
        seed=seed,
        validate=validate,
    )
    if _is_shipped_name(name_or_path):
        where = f"rtplan.atlases/{name_or_path}"
        return _build_parametric(_atlas_root() / name_or_path, where, name_or_path, opts)
    path = Path(name_or_path)
    if not path.is_dir():
        raise AtlasNotFoundError(
            f"no atlas {str(name_or_path)!r}: not a shipped atlas ({', '.join(list_atlases())}) "
            "and not a folder"
        )
    if (path / "atlas.toml").is_file():
        return _build_parametric(path, str(path), path.name, opts)
    asked = opts.asked()
    if asked:
        raise InvalidInputError(
            f"{', '.join(asked)} can only be used with a parametric atlas, not with the "
            f"patient anatomy in {path}"
        )
    if list(path.glob("*.nii")) + list(path.glob("*.nii.gz")):
        return atlas_from_label_maps(path)
    return atlas_from_dicom(path)


def _is_shipped_name(name_or_path: str | os.PathLike[str]) -> TypeGuard[str]:
    """True for a str without path separators that names a shipped atlas."""
    return (
        isinstance(name_or_path, str)
        and "/" not in name_or_path
        and "\\" not in name_or_path
        and name_or_path in list_atlases()
    )


def _build_options(
    *,
    spacing_mm: Sequence[float] | float | None,
    shape: Sequence[int] | None,
    grid: ImageGrid | None,
    scale: float | Sequence[float],
    bladder_filling: float,
    rectal_filling: float,
    seed: int | None,
    validate: bool,
) -> _BuildOptions:
    """The build arguments of :func:`load_atlas`, type-checked, with spacing and shape as 3."""
    if spacing_mm is not None:
        check_reals(spacing_mm, name="spacing_mm")
    if shape is not None:
        check_integers(shape, name="shape")
    if grid is not None:
        check_type(grid, ImageGrid, name="grid")
    check_reals(scale, name="scale")
    check_real(bladder_filling, name="bladder_filling")
    check_real(rectal_filling, name="rectal_filling")
    if seed is not None and not is_integer(seed):
        raise TypeError(f"seed must be an int or None, got {type(seed).__name__} {seed!r}")
    check_type(validate, bool, name="validate", expected_text="True or False")
    return _BuildOptions(
        spacing_mm=None if spacing_mm is None else _three_mm(spacing_mm),
        shape=None if shape is None else _three_ints(shape),
        grid=grid,
        scale=scale,
        bladder_filling=float(bladder_filling),
        rectal_filling=float(rectal_filling),
        seed=None if seed is None else int(seed),
        validate=validate,
    )


def _three_mm(spacing_mm: Sequence[float] | float) -> FloatArray:
    """``spacing_mm`` as (sz, sy, sx): one number means the same spacing on every axis."""
    a = np.asarray(spacing_mm, float)
    if a.ndim > 1 or a.size not in (1, 3):
        raise GeometryError(
            f"spacing_mm must be a number or three numbers (sz, sy, sx) in mm, got {spacing_mm!r}"
        )
    return np.broadcast_to(a, (3,)).copy()


def _three_ints(shape: Sequence[int]) -> Shape3:
    if len(shape) != 3:
        raise GeometryError(f"shape must be three positive ints (nz, ny, nx), got {shape!r}")
    return (int(shape[0]), int(shape[1]), int(shape[2]))


def _to_identity(
    arrays: Sequence[npt.NDArray[_ScalarT]], grid: ImageGrid
) -> tuple[list[npt.NDArray[_ScalarT]], ImageGrid]:
    """Flip arrays (and the grid) so that the direction is the identity."""
    signs = grid.axis_signs
    if all(s > 0 for s in signs):
        return list(arrays), grid
    axes = tuple(n for n, s in enumerate(signs) if s < 0)
    last = [(n - 1) if s < 0 else 0 for n, s in zip(grid.shape, signs)]
    origin = grid.index_to_lps(last)
    new = ImageGrid(
        shape=grid.shape,
        spacing_mm=grid.spacing_mm,
        origin_mm=(float(origin[0]), float(origin[1]), float(origin[2])),
        frame_of_reference_uid=grid.frame_of_reference_uid,
    )
    return [np.ascontiguousarray(np.flip(a, axis=axes)) for a in arrays], new


def _finish_user_atlas(
    name: str,
    grid: ImageGrid,
    ct: npt.NDArray[np.generic] | None,
    structures: StructureSet,
    source: str,
    *,
    given_landmarks: Mapping[str, Vec3] | None = None,
    landmark_derivations: Mapping[str, str] | None = None,
) -> Atlas:
    """The atlas of user anatomy: a pseudo-CT when there is no CT, derived landmarks.

    Landmarks come from ``given_landmarks`` (POINT ROIs, an argument) first; the others
    are derived from the structures (:func:`derive_landmarks`'s rules) and marked as
    derived. Landmarks refused because their structure is cut by the scan's edge are
    listed in ``parameters["refused_landmarks"]`` and in a warning.
    """
    ct_hu = _pseudo_ct(structures, grid) if ct is None else np.asarray(ct, np.float32)
    given = dict(given_landmarks or {})
    rules = _rule_landmarks(structures)
    landmarks = dict(given)
    derivations = {k: v for k, v in (landmark_derivations or {}).items() if k in given}
    for key, point in rules.points.items():
        if key not in landmarks:
            landmarks[key] = point
            derivations[key] = rules.how[key]
    refused = {k: why for k, why in rules.refused.items() if k not in landmarks}
    if refused:
        warnings.warn(_refused_text(refused), RtplanWarning, stacklevel=3)
    atlas = Atlas(
        name=name,
        grid=grid,
        ct_hu=ct_hu,
        structures=structures,
        landmarks=landmarks,
        source=source,
        landmark_derivations=derivations,
    )
    atlas.parameters["missing"] = atlas.missing()
    if refused:
        atlas.parameters["refused_landmarks"] = refused
    return atlas


def _pseudo_ct(structures: StructureSet, grid: ImageGrid) -> npt.NDArray[np.float32]:
    ct = np.full(grid.shape, -1000.0, np.float32)
    for prefixes, hu in _PSEUDO_CT_HU:
        for name in structures.names:
            if name.startswith(prefixes):
                s = structures[name]
                if s.bbox is not None:
                    ct[s.bbox][s.cropped_mask] = hu
    return ct


def atlas_from_dicom(
    folder: str | os.PathLike[str],
    *,
    rtstruct: str | os.PathLike[str] | None = None,
    series_uid: str | None = None,
    complete: bool = False,
    landmarks: Mapping[str, Sequence[float]] | None = None,
    progress: Progress | ProgressLike | bool | None = None,
) -> Atlas:
    """The patient's anatomy from a DICOM CT series and an RTSTRUCT.

    Reads the CT with :func:`rtplan.dicom_io.read_ct_series` and the ROIs with
    :func:`rtplan.dicom_io.read_rtstruct` (rasterised on the CT grid, names mapped to
    TG-263), flips the arrays to the identity direction, and takes the landmarks from
    the RTSTRUCT's POINT ROIs (:func:`rtplan.dicom_io.read_point_rois`), then from
    ``landmarks``, deriving the rest from the structures (:func:`derive_landmarks`).
    ROIs that rtplan marked as derived (ROIGenerationDescription, see
    :mod:`rtplan.dicom_io.points`) are derived again in memory. Structures and landmarks
    that later steps need but that are missing are listed by name by
    :meth:`Atlas.missing` (also stored in ``atlas.parameters["missing"]``);
    :meth:`Atlas.require` raises naming them. With ``complete=True`` they are derived
    by :func:`complete_anatomy`.

    Parameters
    ----------
    folder : str or Path
        Folder with the CT slices (and the RTSTRUCT, unless ``rtstruct`` is given).
    rtstruct : str or Path, optional
        The RTSTRUCT file; default: the one RTSTRUCT found in ``folder``.
    series_uid : str, optional
        SeriesInstanceUID of the CT when the folder holds several series.
    complete : bool
        Derive the missing structures and landmarks (:func:`complete_anatomy`; about ten
        seconds to a minute).
    landmarks : mapping of str to (x, y, z), optional
        Landmarks in LPS mm that override those of the file and any derivation.
    progress : Progress, callable, bool or None
        Progress of the completion (see :func:`rtplan._progress.as_progress`).

    Raises
    ------
    TypeError
        When an argument is not of the type above.
    AtlasNotFoundError
        When the folder does not exist.
    DicomInputError
        When there is no RTSTRUCT, or several and none was chosen.
    InvalidInputError
        When a landmark is not three finite numbers.
    """
    from rtplan.dicom_io import read_ct_series, read_point_rois, read_rtstruct
    from rtplan.dicom_io.points import read_roi_derivations

    check_type(folder, PATH_TYPES, name="folder", expected_text="a str or path")
    if rtstruct is not None:
        check_type(rtstruct, PATH_TYPES, name="rtstruct", expected_text="a str or path")
    if series_uid is not None:
        check_type(series_uid, str, name="series_uid")
    check_type(complete, bool, name="complete", expected_text="True or False")
    explicit = _explicit_landmarks(landmarks)
    path = Path(folder)
    if not path.is_dir():
        raise AtlasNotFoundError(f"DICOM folder {path} does not exist")
    ct = read_ct_series(path, series_uid=series_uid)
    rs_path = Path(rtstruct) if rtstruct is not None else _the_rtstruct(path)
    ss = read_rtstruct(rs_path, ct.grid, map_names=True)
    points = read_point_rois(rs_path)
    marks = read_roi_derivations(rs_path)
    point_keys = {ss.resolve(raw) for raw in points} - {None}
    names = [n for n in ss.names if n not in point_keys]
    (ct_hu,), grid = _to_identity([np.asarray(ct.hu)], ct.grid)
    masks, _ = _to_identity([ss[n].mask for n in names], ct.grid)
    derivation_of = {ss.resolve(raw): how for raw, how in marks.items() if raw not in points}
    structures = StructureSet(
        [
            Structure(
                n, m, grid, role=ss[n].role, color=ss[n].color, derivation=derivation_of.get(n, "")
            )
            for n, m in zip(names, masks)
        ],
        grid=grid,
    )
    given = {**points, **explicit}
    point_marks = {k: how for k, how in marks.items() if k in points and k not in explicit}
    atlas = _finish_user_atlas(
        path.name,
        grid,
        ct_hu,
        structures,
        str(path),
        given_landmarks=given,
        landmark_derivations=point_marks,
    )
    return complete_anatomy(atlas, landmarks=explicit, progress=progress) if complete else atlas


def _explicit_landmarks(landmarks: Mapping[str, Sequence[float]] | None) -> dict[str, Vec3]:
    if landmarks is None:
        return {}
    check_type(landmarks, Mapping, name="landmarks", expected_text="a mapping of name to (x, y, z)")
    return _checked_landmarks(
        {
            k: list(v) if isinstance(v, (list, tuple, np.ndarray)) else v
            for k, v in landmarks.items()
        },
        where="landmarks",
    )


def _the_rtstruct(folder: Path) -> Path:
    """The one RTSTRUCT file in ``folder`` (searched recursively)."""
    candidates = _find_rtstructs(folder)
    if not candidates:
        raise DicomInputError(
            f"no RTSTRUCT in {folder}; pass rtstruct= or add the structure set file"
        )
    if len(candidates) > 1:
        raise DicomInputError(
            f"several RTSTRUCT files in {folder}: {', '.join(p.name for p in candidates)}; "
            "choose one with rtstruct="
        )
    return candidates[0]


def _find_rtstructs(folder: Path) -> list[Path]:
    """Files under ``folder`` that are DICOM with Modality RTSTRUCT (others are skipped)."""
    import pydicom
    from pydicom.errors import InvalidDicomError

    out = []
    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        try:
            with warnings.catch_warnings():  # non-DICOM files make pydicom warn
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["Modality"])
        except InvalidDicomError:  # not a DICOM file (no preamble / DICM prefix)
            continue
        if ds.get("Modality") == "RTSTRUCT":
            out.append(p)
    return out


def _nifti_stem(p: Path) -> str:
    return re.sub(r"\.nii(\.gz)?$", "", p.name)


def _map_label_name(raw: str) -> str:
    if raw in TOTALSEGMENTATOR_NAMES:
        return TOTALSEGMENTATOR_NAMES[raw]
    return canonical_name(raw) or raw


def atlas_from_label_maps(
    folder: str | os.PathLike[str],
    *,
    ct: str | os.PathLike[str] | None = None,
    labels: Mapping[int, str] | None = None,
    femur_head_length_mm: float = 70.0,
    complete: bool = False,
    landmarks: Mapping[str, Sequence[float]] | None = None,
    progress: Progress | ProgressLike | bool | None = None,
) -> Atlas:
    """The patient's anatomy from NIfTI label maps (TotalSegmentator style).

    Two layouts are read: one binary file per class (``<class>.nii.gz``, as
    TotalSegmentator writes by default), or a single multilabel file plus a class
    mapping (``labels``, or a ``*.json`` file ``{"1": "urinary_bladder", ...}`` or a
    ``*.txt`` file of ``<value> <name>`` lines in the folder). Class names are mapped to
    TG-263 (:data:`TOTALSEGMENTATOR_NAMES`, then
    :func:`rtplan.structures.canonical_name`); unknown classes keep their name, empty
    classes are dropped. The RAS affine is converted to LPS
    (:meth:`ImageGrid.from_affine`) and the arrays flipped to the identity direction.

    TotalSegmentator's ``femur_*`` is the whole femur in view: it is cropped to the top
    ``femur_head_length_mm`` (head and neck; tool default 70 mm). Its ``hip_*`` is the
    whole hip bone, stored as ``Bone_Ilium_*``; ``PubicSymphys`` is derived from the
    hip bones (their parts within 25 mm of the midline, tool default).

    Parameters
    ----------
    folder : str or Path
        Folder of label maps (``ct.nii.gz`` / ``image.nii.gz`` in it is taken as the CT).
    ct : str or Path, optional
        The CT: a NIfTI file, or a DICOM folder (read with
        :func:`rtplan.dicom_io.read_ct_series`) on the same grid as the labels. Without
        one, a pseudo-CT is painted from the structures.
    labels : mapping of int to str, optional
        Class names of a multilabel file.
    femur_head_length_mm : float
        Length of femur kept from its top as ``Femur_Head_*`` (mm, > 0).
    complete : bool
        Derive the missing structures and landmarks (:func:`complete_anatomy`); needs a
        CT (a pseudo-CT painted from the labels is not enough to register on).
    landmarks : mapping of str to (x, y, z), optional
        Landmarks in LPS mm that override any derivation.
    progress : Progress, callable, bool or None
        Progress of the completion.

    Raises
    ------
    ImportError
        When nibabel is not installed (``pip install rtplan[nifti]``).
    TypeError
        When an argument is not of the type above.
    InvalidInputError
        When ``femur_head_length_mm`` is not a positive finite length.
    AtlasNotFoundError
        When the folder has no NIfTI files.
    GeometryError
        When the files disagree in geometry or the affine is not axial.
    """
    _check_label_map_arguments(folder, ct, labels, femur_head_length_mm)
    check_type(complete, bool, name="complete", expected_text="True or False")
    explicit = _explicit_landmarks(landmarks)
    _require_nibabel()
    path = Path(folder)
    files = sorted(path.glob("*.nii")) + sorted(path.glob("*.nii.gz"))
    ct_names = {"ct", "image", "img", "ct_image"}
    ct_file = next((f for f in files if _nifti_stem(f).lower() in ct_names), None)
    files = [f for f in files if f is not ct_file]
    if not files:
        raise AtlasNotFoundError(f"no NIfTI label maps (*.nii, *.nii.gz) in {path}")
    mapping = dict(labels) if labels is not None else _read_label_table(path)
    raw, grid0 = _read_label_masks(files, mapping)
    masks, grid = _to_identity([m for _, m in raw], grid0)
    ct_path = Path(ct) if ct is not None else ct_file
    ct_hu = None if ct_path is None else _read_label_map_ct(ct_path, grid)
    structures = _structures_from_labels(
        [(name, m) for (name, _), m in zip(raw, masks)], grid, femur_head_length_mm
    )
    if complete and ct_hu is None:
        raise InvalidInputError(
            f"completing the anatomy of {path} needs its CT (ct= or a ct.nii.gz in the folder)"
        )
    atlas = _finish_user_atlas(
        path.name, grid, ct_hu, structures, str(path), given_landmarks=explicit
    )
    read_as = [TOTALSEGMENTATOR_NAMES.get(cls) for cls, _ in raw]
    combined = {
        n: list(_COMBINED_LABELS[n]) for n in read_as if n in _COMBINED_LABELS and n in structures
    }
    if combined:
        atlas.parameters["combined_labels"] = combined
    return complete_anatomy(atlas, landmarks=explicit, progress=progress) if complete else atlas


def _check_label_map_arguments(
    folder: str | os.PathLike[str],
    ct: str | os.PathLike[str] | None,
    labels: Mapping[int, str] | None,
    femur_head_length_mm: float,
) -> None:
    check_type(folder, PATH_TYPES, name="folder", expected_text="a str or path")
    if ct is not None:
        check_type(ct, PATH_TYPES, name="ct", expected_text="a str or path")
    if labels is not None:
        check_type(labels, Mapping, name="labels", expected_text="a mapping of int to str")
        bad = [(k, v) for k, v in labels.items() if not is_integer(k) or not isinstance(v, str)]
        if bad:
            raise TypeError(f"labels must map int label values to str names, got {bad[:3]!r}")
    check_real(femur_head_length_mm, name="femur_head_length_mm")
    if not math.isfinite(femur_head_length_mm) or femur_head_length_mm <= 0:
        raise InvalidInputError(
            f"femur_head_length_mm must be a positive length in mm, got {femur_head_length_mm!r}"
        )


def _require_nibabel() -> None:
    try:
        import nibabel  # noqa: F401
    except ImportError:  # pragma: no cover - nibabel is installed in the test env
        raise ImportError(
            "reading NIfTI label maps needs nibabel: pip install 'rtplan[nifti]'"
        ) from None


def _load_nifti(f: Path) -> tuple[npt.NDArray[np.generic], ImageGrid]:
    """A NIfTI image as an rtplan ``[k, j, i]`` array and its (LPS) grid."""
    import nibabel as nib
    from nibabel.spatialimages import SpatialImage

    img = nib.load(str(f))
    if not isinstance(img, SpatialImage) or img.affine is None:
        raise GeometryError(f"{f} is not a NIfTI image with an affine")
    data: npt.NDArray[np.generic] = np.asanyarray(img.dataobj)
    if data.ndim == 4 and data.shape[3] == 1:
        data = data[..., 0]
    if data.ndim != 3:
        raise GeometryError(f"{f} holds a {data.ndim}-D array; expected 3-D")
    g = ImageGrid.from_affine(img.affine, data.shape, convention="RAS")
    return ImageGrid.array_from_ijk(data), g


def _read_label_masks(
    files: Sequence[Path], mapping: Mapping[int, str]
) -> tuple[list[tuple[str, BoolMask]], ImageGrid]:
    """``(class name, mask)`` of every class, and the grid shared by the files.

    One multilabel file with a class mapping, or one binary file per class.
    """
    raw: list[tuple[str, BoolMask]] = []
    if len(files) == 1 and mapping:
        arr, grid0 = _load_nifti(files[0])
        for v in np.unique(arr).tolist():
            if v == 0:
                continue
            cname = mapping.get(int(v), f"label_{int(v)}")
            raw.append((cname, arr == v))
        return raw, grid0
    first: ImageGrid | None = None
    for f in files:
        arr, g = _load_nifti(f)
        if first is None:
            first = g
        elif not first.equals(g, atol_mm=0.01):
            raise GeometryError(
                f"{f.name} is on {g.describe()} but {files[0].name} is on "
                f"{first.describe()}; label maps must share one grid"
            )
        raw.append((_nifti_stem(f), arr != 0))
    assert first is not None  # files is not empty
    return raw, first


def _read_label_map_ct(ct_path: Path, grid: ImageGrid) -> npt.NDArray[np.generic]:
    """The CT of label maps (NIfTI file or DICOM folder), flipped; it must be on ``grid``."""
    if ct_path.is_dir():
        from rtplan.dicom_io import read_ct_series

        series = read_ct_series(ct_path)
        (dicom_ct,), ct_grid = _to_identity([np.asarray(series.hu)], series.grid)
        ct_arr: npt.NDArray[np.generic] = dicom_ct
    else:
        raw_ct, raw_grid = _load_nifti(ct_path)
        (nifti_ct,), ct_grid = _to_identity([raw_ct], raw_grid)
        ct_arr = nifti_ct
    if not ct_grid.equals(grid, atol_mm=0.01):
        raise GeometryError(
            f"the CT is on {ct_grid.describe()} but the label maps are on {grid.describe()}; "
            "resample one onto the other first"
        )
    return ct_arr


def _structures_from_labels(
    named_masks: Sequence[tuple[str, BoolMask]], grid: ImageGrid, femur_head_length_mm: float
) -> StructureSet:
    """Structures with TG-263 names; femurs cropped to their heads; a derived symphysis."""
    structures = StructureSet(grid=grid)
    for rname, mask in named_masks:
        if not mask.any():
            continue
        name = _map_label_name(rname)
        if name.startswith("Femur_Head"):
            mask = _crop_top(mask, grid, femur_head_length_mm)
        structures.add(
            Structure(name, mask, grid, role="external" if name == "Body" else "organ"),
            replace=name in structures,
        )
    if "PubicSymphys" not in structures and {"Bone_Ilium_L", "Bone_Ilium_R"} <= set(
        structures.names
    ):
        ps = _symphysis_from_hips(structures, grid)
        if ps is not None:
            structures.add(
                Structure(
                    "PubicSymphys",
                    ps,
                    grid,
                    derivation="hip bones within 25 mm of the midline, anterior",
                )
            )
    return structures


def _read_label_table(folder: Path) -> dict[int, str]:
    """The class table of a multilabel file: a ``*.json`` or ``*.txt`` file in ``folder``."""
    for f in sorted(folder.glob("*.json")):
        try:
            table = json.loads(f.read_text(encoding="utf-8"))
        except ValueError:
            continue
        if isinstance(table, dict):
            try:
                return {int(k): str(v) for k, v in table.items()}
            except (TypeError, ValueError):
                try:  # name -> value layout
                    return {int(v): str(k) for k, v in table.items()}
                except (TypeError, ValueError):
                    continue
    for f in sorted(folder.glob("*.txt")):
        out = {}
        for line in f.read_text(encoding="utf-8").splitlines():
            parts = line.replace(",", " ").split()
            if len(parts) >= 2 and parts[0].isdigit():
                out[int(parts[0])] = parts[1]
        if out:
            return out
    return {}


def _crop_top(mask: BoolMask, grid: ImageGrid, length_mm: float) -> BoolMask:
    z = grid.axis_coordinates_mm()[0]
    ks = np.flatnonzero(mask.any(axis=(1, 2)))
    top = z[ks].max()
    keep = z >= top - length_mm
    cropped: BoolMask = mask & keep[:, None, None]
    return cropped


def _symphysis_from_hips(structures: StructureSet, grid: ImageGrid) -> BoolMask | None:
    left, right = structures["Bone_Ilium_L"], structures["Bone_Ilium_R"]
    mid_x = (left.centroid_mm[0] + right.centroid_mm[0]) / 2
    both = left.mask | right.mask
    _, y, x = grid.axis_coordinates_mm()
    near = np.abs(x - mid_x) <= 25.0
    ps = both & near[None, None, :]
    # keep the anterior part only (the sacroiliac joints lie posteriorly)
    y_mid = (left.centroid_mm[1] + right.centroid_mm[1]) / 2
    ps &= (y < y_mid)[None, :, None]
    return ps if ps.any() else None


# ============================================================================ completion

#: Landmarks taken from the registered atlas before any rule on structures: the cut end
#: of the vas deferens has no structure, and the bottom of the bladder misses the
#: anastomosis by 3-8 mm on the shipped atlas's variants (the rule stays the fallback).
_ATLAS_FIRST_LANDMARKS: frozenset[str] = frozenset({"VasDeferens_CutEnd", "VUA"})

_DERIVATION_ATLAS_POINT = "atlas landmark carried by registration"
#: ... carried with the user's structures of its variation group (named in the text).
_DERIVATION_ATLAS_GROUP = "atlas landmark carried with the given {}"


def complete_anatomy(
    anatomy: Atlas,
    *,
    landmarks: Mapping[str, Sequence[float]] | None = None,
    reference: str | Atlas = "male_pelvis_postop",
    settings: CompletionSettings | None = None,
    progress: Progress | ProgressLike | bool | None = None,
) -> Atlas:
    """The anatomy with what planning and staging need but the user's set lacks.

    Missing structures of :data:`ATLAS_STRUCTURES` are derived by
    :func:`rtplan.completion.complete_structures`: bones from the CT's Hounsfield units
    named by the registered atlas and shape rules; vessels, muscles, pelvic-floor organs
    and the prostate-bed region carried over from the shipped atlas registered to the
    patient (SimpleITK: rigid, affine, deformable on the CT and the organs both have).
    Missing landmarks of :data:`ATLAS_LANDMARKS` are, in order of preference: given
    (``landmarks``, then the anatomy's own, e.g. RTSTRUCT POINT ROIs); a rule on the
    user's own structures (:func:`derive_landmarks`; not for ``VasDeferens_CutEnd`` and
    ``VUA``); the atlas landmark carried with the user's structures of its variation
    group (:attr:`Atlas.variation_groups`; e.g. ``VUA`` and ``VasDeferens_CutEnd`` with
    the penile bulb, see :mod:`rtplan.completion.landmarks`), else by the registration;
    a rule on derived structures. TotalSegmentator's combined common+external iliac
    labels (``parameters["combined_labels"]``) are split between the two segments at
    the registered atlas's bifurcation, every given voxel kept. A landmark whose
    structure is cut by the scan's edge, or that the registration carries outside the
    scan, is refused and listed in ``parameters["refused_landmarks"]``.

    User structures always win: they are kept unchanged (a combined label is only
    shared out between its segments) and no derived structure overlaps them. Every
    derived structure carries its
    :attr:`~rtplan.structures.Structure.derivation`, every derived landmark its entry in
    :attr:`Atlas.landmark_derivations`; one :class:`~rtplan.errors.RtplanWarning` lists
    them all. The shipped atlas is one synthetic pelvis: real anatomy differs more than
    its variants do, so the derived structures must be reviewed (docs/completion.md).

    Parameters
    ----------
    anatomy : Atlas
        The patient's CT and structures (e.g. from :func:`atlas_from_dicom`).
    landmarks : mapping of str to (x, y, z), optional
        Landmarks in LPS mm that override every other source.
    reference : str or Atlas
        The atlas to register: a shipped atlas name (built on the registration grid and
        on a grid as fine as the patient's) or an :class:`Atlas`.
    settings : CompletionSettings, optional
        Registration and bone parameters (tool defaults).
    progress : Progress, callable, bool or None
        Progress reporting (see :func:`rtplan._progress.as_progress`).

    Returns
    -------
    Atlas
        A new atlas; ``parameters["completion"]`` records the reference, the derived
        names, the registration metrics and the time of each step.

    Raises
    ------
    TypeError
        When an argument is not of the type above.
    InvalidInputError
        When the CT shows no patient or a landmark is not three finite numbers.
    """
    from rtplan.completion import CompletionSettings, complete_structures
    from rtplan.completion.landmarks import carry_with_group, group_anchors

    check_type(anatomy, Atlas, name="anatomy")
    check_type(reference, (str, Atlas), name="reference", expected_text="an atlas name or Atlas")
    if settings is not None:
        check_type(settings, CompletionSettings, name="settings")
    explicit = _explicit_landmarks(landmarks)
    s = settings or CompletionSettings()
    p = as_progress(progress)
    t0 = time.perf_counter()
    with p.step("building the reference atlas"):
        coarse, fine = _reference_atlases(reference, anatomy.grid, s)
    result = complete_structures(
        anatomy,
        coarse,
        fine,
        wanted=ATLAS_STRUCTURES,
        settings=s,
        progress=p,
        combined=_combined_labels(anatomy),
    )
    given = [n for n in result.structures.names if not result.structures[n].derived]
    with_group = carry_with_group(
        result.registration,
        fine.structures,
        fine.landmarks,
        result.structures,
        group_anchors(fine.variation_groups, ATLAS_LANDMARKS, given),
    )
    points, how, refused = _completed_landmarks(
        anatomy, result.structures, result.atlas_landmarks, explicit, with_group
    )
    completed = Atlas(
        name=anatomy.name,
        grid=anatomy.grid,
        ct_hu=anatomy.ct_hu,
        structures=result.structures,
        landmarks=points,
        source=anatomy.source,
        parameters=dict(anatomy.parameters),
        landmark_derivations=how,
    )
    split = completed.parameters.pop("combined_labels", None)  # now split: not again
    completed.parameters.update(
        missing=completed.missing(),
        refused_landmarks=refused,
        completion={
            "reference": reference if isinstance(reference, str) else reference.name,
            "derived_structures": list(result.derived),
            "derived_landmarks": list(how),
            "split_labels": sorted(split) if isinstance(split, dict) else [],
            "shared_organs": list(result.registration.shared_organs),
            "registration_metrics": dict(result.registration.metrics),
            "seconds": {
                **{k: round(v, 2) for k, v in result.registration.seconds.items()},
                **{k: round(v, 2) for k, v in result.seconds.items()},
                "total": round(time.perf_counter() - t0, 2),
            },
        },
    )
    _warn_derived(completed, refused)
    return completed


def _combined_labels(anatomy: Atlas) -> dict[str, tuple[str, ...]]:
    """``parameters["combined_labels"]``: labels holding several segments (itself first)."""
    value = anatomy.parameters.get("combined_labels", {})
    what = f'parameters["combined_labels"] of atlas {anatomy.name!r}'
    table = _table(value, what)
    return {name: tuple(_strings(segs, f"{what}[{name!r}]")) for name, segs in table.items()}


def _reference_atlases(
    reference: str | Atlas, grid: ImageGrid, settings: CompletionSettings
) -> tuple[Atlas, Atlas]:
    """The reference on the registration grid and on a grid at least as fine as the patient's.

    The fine grid covers the reference's body, with pixels as the patient's (at least
    1 mm) and slices of at most :data:`_FINE_SLICE_MM` (the levels the completion carries
    over, such as the sacral slabs, are then placed within half of that).
    """
    if isinstance(reference, Atlas):
        return reference, reference
    coarse = load_atlas(reference, spacing_mm=settings.registration.deformable_spacing_mm)
    (x0, x1), (y0, y1), (z0, z1) = coarse.structures["Body"].bounds_mm
    sz, sy, sx = grid.spacing_mm
    spacing = (min(float(sz), _FINE_SLICE_MM), max(float(sy), 1.0), max(float(sx), 1.0))
    shape = (
        int(np.ceil((z1 - z0) / spacing[0])),
        int(np.ceil((y1 - y0) / spacing[1])),
        int(np.ceil((x1 - x0) / spacing[2])),
    )
    fine_grid = ImageGrid(
        shape=shape,
        spacing_mm=spacing,
        origin_mm=(x0 + spacing[2] / 2, y0 + spacing[1] / 2, z0 + spacing[0] / 2),
    )
    return coarse, load_atlas(reference, grid=fine_grid)


#: Largest slice spacing of the reference structures carried to the patient (mm; tool
#: default: a plane of the atlas falls within 0.6 mm of where the reference puts it).
_FINE_SLICE_MM = 1.25


def _carried(
    key: str,
    atlas_points: Mapping[str, Vec3],
    with_group: Mapping[str, tuple[Vec3, tuple[str, ...]]],
) -> tuple[Vec3, str] | None:
    """The atlas landmark on the patient and how it got there, or ``None``.

    Carried with the user's structures of its variation group when there are some
    (:func:`rtplan.completion.landmarks.carry_with_group`), else by the registration.
    """
    if key in with_group:
        point, anchors = with_group[key]
        return point, _DERIVATION_ATLAS_GROUP.format(", ".join(anchors))
    if key in atlas_points:
        return atlas_points[key], _DERIVATION_ATLAS_POINT
    return None


def _completed_landmarks(
    anatomy: Atlas,
    structures: StructureSet,
    atlas_points: Mapping[str, Vec3],
    explicit: Mapping[str, Vec3],
    with_group: Mapping[str, tuple[Vec3, tuple[str, ...]]] | None = None,
) -> tuple[dict[str, Vec3], dict[str, str], dict[str, str]]:
    """Landmarks of the completed anatomy, how the derived ones were found, and refusals.

    Order of preference: given (``explicit``, then the anatomy's own given landmarks); a
    rule on the user's structures (not for :data:`_ATLAS_FIRST_LANDMARKS`); the atlas
    landmark carried to the patient when it lies inside the scan (``with_group``: with
    the user's structures of its variation group; else ``atlas_points``: by the
    registration); a rule on derived structures.
    """
    points = {k: v for k, v in anatomy.landmarks.items() if k not in anatomy.landmark_derivations}
    points.update(explicit)
    how: dict[str, str] = {}
    refused: dict[str, str] = {}
    rules = _rule_landmarks(structures)
    z_mm = anatomy.grid.axis_coordinates_mm()[0]
    z_lo, z_hi = float(z_mm.min()), float(z_mm.max())
    for key in dict.fromkeys([*ATLAS_LANDMARKS, *rules.points]):
        if key in points:
            continue
        on_user = key in rules.points and not any(structures[n].derived for n in rules.sources[key])
        carried = _carried(key, atlas_points, with_group or {})
        if on_user and key not in _ATLAS_FIRST_LANDMARKS:
            points[key], how[key] = rules.points[key], rules.how[key]
        elif carried is not None and z_lo <= carried[0][2] <= z_hi:
            points[key] = carried[0]
            why = rules.refused.get(key)
            how[key] = carried[1] + (f"; rule refused: {why}" if why else "")
        elif key in rules.points:
            points[key] = rules.points[key]
            how[key] = rules.how[key] + ("" if on_user else " (derived)")
        elif carried is not None:
            refused[key] = (
                f"carried from the atlas to z = {carried[0][2]:.1f} mm, outside the scan "
                f"({z_lo:.1f} to {z_hi:.1f} mm)"
            )
    for key, why in rules.refused.items():
        if key not in points and key not in refused:
            refused[key] = why
    return points, how, refused


def _warn_derived(atlas: Atlas, refused: Mapping[str, str]) -> None:
    """One warning listing every derived structure and landmark, and the refused ones."""
    structures = list(atlas.derived_structures)
    landmarks = list(atlas.landmark_derivations)
    parts = []
    if structures:
        parts.append(f"{len(structures)} structures ({', '.join(structures)})")
    if landmarks:
        parts.append(f"{len(landmarks)} landmarks ({', '.join(landmarks)})")
    text = (
        f"anatomy completion derived {' and '.join(parts)} for {atlas.name!r}; they are "
        "estimates from the CT and the registered atlas: review them before planning"
        if parts
        else f"anatomy completion found nothing to derive for {atlas.name!r}"
    )
    if refused:
        text += "; " + _refused_text(refused)
    warnings.warn(text, RtplanWarning, stacklevel=3)
