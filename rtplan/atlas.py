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
later structures overriding earlier ones; see ``atlases/README.md`` for the format.
"""

from __future__ import annotations

import hashlib
import importlib.resources
import json
import math
import re
import sys
import warnings
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from rtplan.errors import (
    AtlasNotFoundError,
    GeometryError,
    InvalidInputError,
    MissingStructureError,
    RtplanError,
)
from rtplan.grid import ImageGrid
from rtplan.structures import Structure, StructureSet, canonical_name

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
    "derive_landmarks",
    "list_atlases",
    "load_atlas",
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
#: external iliac vessels together; they are mapped to the common iliac names.
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
        CT numbers in Hounsfield units.
    structures : StructureSet
        Structures on ``grid`` with TG-263 names where known.
    landmarks : dict of str to (x, y, z)
        Named points in LPS mm (see :data:`ATLAS_LANDMARKS`).
    source : str
        Where the anatomy came from (atlas definition file, DICOM folder, label maps).
    parameters : dict
        Build parameters (scale, fillings, seed, jitter drawn) for provenance.
    """

    name: str
    grid: ImageGrid
    ct_hu: np.ndarray
    structures: StructureSet
    landmarks: dict[str, tuple[float, float, float]]
    source: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)

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
        """
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

    def __repr__(self) -> str:
        return (
            f"Atlas({self.name!r}, {self.grid.describe()}, {len(self.structures)} structures, "
            f"{len(self.landmarks)} landmarks)"
        )


# ============================================================================ solids


def _rotation(angles_deg: Sequence[float]) -> np.ndarray:
    """Rotation matrix R = Rz @ Ry @ Rx for angles (about x, y, z) in degrees."""
    ax, ay, az = (math.radians(float(a)) for a in angles_deg)
    rx = np.array([[1, 0, 0], [0, math.cos(ax), -math.sin(ax)], [0, math.sin(ax), math.cos(ax)]])
    ry = np.array([[math.cos(ay), 0, math.sin(ay)], [0, 1, 0], [-math.sin(ay), 0, math.cos(ay)]])
    rz = np.array([[math.cos(az), -math.sin(az), 0], [math.sin(az), math.cos(az), 0], [0, 0, 1]])
    return rz @ ry @ rx


class _Solid:
    """Elementary solid: bounding box and a point-in-solid test on voxel centres."""

    def bbox(self, grow: float) -> tuple[np.ndarray, np.ndarray] | None:
        raise NotImplementedError

    def inside(self, x: np.ndarray, y: np.ndarray, z: np.ndarray, grow: float) -> np.ndarray:
        raise NotImplementedError


@dataclass
class _Ellipsoid(_Solid):
    center: np.ndarray
    radii: np.ndarray
    rot: np.ndarray | None = None

    def bbox(self, grow: float) -> tuple[np.ndarray, np.ndarray]:
        r = self.radii + grow
        half = r if self.rot is None else np.sqrt(((self.rot * r[None, :]) ** 2).sum(axis=1))
        return self.center - half, self.center + half

    def inside(self, x, y, z, grow):
        r = self.radii + grow
        dx, dy, dz = x - self.center[0], y - self.center[1], z - self.center[2]
        if self.rot is None:
            return (dx / r[0]) ** 2 + (dy / r[1]) ** 2 + (dz / r[2]) ** 2 <= 1.0
        m = self.rot  # local = R^T d
        u = m[0, 0] * dx + m[1, 0] * dy + m[2, 0] * dz
        v = m[0, 1] * dx + m[1, 1] * dy + m[2, 1] * dz
        w = m[0, 2] * dx + m[1, 2] * dy + m[2, 2] * dz
        return (u / r[0]) ** 2 + (v / r[1]) ** 2 + (w / r[2]) ** 2 <= 1.0


@dataclass
class _Box(_Solid):
    lo: np.ndarray
    hi: np.ndarray

    def bbox(self, grow):
        return self.lo - grow, self.hi + grow

    def inside(self, x, y, z, grow):
        lo, hi = self.lo - grow, self.hi + grow
        return (
            ((x >= lo[0]) & (x <= hi[0]))
            & ((y >= lo[1]) & (y <= hi[1]))
            & ((z >= lo[2]) & (z <= hi[2]))
        )


@dataclass
class _ECone(_Solid):
    """Elliptic frustum along z; hollow (a wall of ``thickness``) when thickness > 0."""

    z0: float
    z1: float
    c0: np.ndarray
    c1: np.ndarray
    r0: np.ndarray
    r1: np.ndarray
    thickness: float = 0.0

    def bbox(self, grow):
        rmax = np.maximum(self.r0, self.r1) + grow
        lo_xy = np.minimum(self.c0 - rmax, self.c1 - rmax)
        hi_xy = np.maximum(self.c0 + rmax, self.c1 + rmax)
        return (
            np.array([lo_xy[0], lo_xy[1], self.z0 - grow]),
            np.array([hi_xy[0], hi_xy[1], self.z1 + grow]),
        )

    def inside(self, x, y, z, grow):
        f = np.clip((z - self.z0) / (self.z1 - self.z0), 0.0, 1.0)
        cx = self.c0[0] + f * (self.c1[0] - self.c0[0])
        cy = self.c0[1] + f * (self.c1[1] - self.c0[1])
        rx = self.r0[0] + f * (self.r1[0] - self.r0[0])
        ry = self.r0[1] + f * (self.r1[1] - self.r0[1])
        inz = (z >= self.z0 - grow) & (z <= self.z1 + grow)
        q = ((x - cx) / (rx + grow)) ** 2 + ((y - cy) / (ry + grow)) ** 2
        out = (q <= 1.0) & inz
        if self.thickness > 0:
            t = self.thickness + grow
            ix, iy = np.maximum(rx + grow - t, 1e-3), np.maximum(ry + grow - t, 1e-3)
            out &= ((x - cx) / ix) ** 2 + ((y - cy) / iy) ** 2 > 1.0
        return out


@dataclass
class _Capsule(_Solid):
    """Segment a-b swept by a sphere whose radius varies linearly from ra to rb."""

    a: np.ndarray
    b: np.ndarray
    ra: float
    rb: float

    def bbox(self, grow):
        r = max(self.ra, self.rb) + grow
        return np.minimum(self.a, self.b) - r, np.maximum(self.a, self.b) + r

    def inside(self, x, y, z, grow):
        d = self.b - self.a
        l2 = float(d @ d)
        px, py, pz = x - self.a[0], y - self.a[1], z - self.a[2]
        if l2 <= 1e-12:
            t = 0.0
            qx, qy, qz = px, py, pz
        else:
            t = np.clip((px * d[0] + py * d[1] + pz * d[2]) / l2, 0.0, 1.0)
            qx, qy, qz = px - t * d[0], py - t * d[1], pz - t * d[2]
        r = self.ra + t * (self.rb - self.ra) + grow
        return qx * qx + qy * qy + qz * qz <= r * r


@dataclass
class _HalfSpace(_Solid):
    """Points p with (p - point) . normal >= 0 (the side the normal points to)."""

    point: np.ndarray
    normal: np.ndarray

    def bbox(self, grow):
        return None

    def inside(self, x, y, z, grow):
        n, p = self.normal, self.point
        return (x - p[0]) * n[0] + (y - p[1]) * n[1] + (z - p[2]) * n[2] >= -grow


def _catmull_rom(points: np.ndarray, radii: np.ndarray, step_mm: float = 6.0):
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

    scale: np.ndarray
    center: np.ndarray
    shift: np.ndarray
    size: float = 1.0
    fill: float = 1.0
    anchor: np.ndarray = field(default_factory=lambda: np.zeros(3))
    fill_radial: float = 1.0

    def point(self, p: Sequence[float]) -> np.ndarray:
        q = np.asarray(p, float)
        q = self.anchor + self.fill * (q - self.anchor)
        return self.center + self.scale * (q - self.center) + self.shift

    def radii3(self, r: Sequence[float]) -> np.ndarray:
        f = np.array([self.fill_radial, self.fill_radial, 1.0])
        return np.asarray(r, float) * self.scale * self.size * self.fill * f

    def radius(self, r: float) -> float:
        mean = float(np.prod(self.scale)) ** (1 / 3)
        return float(r) * mean * self.size * self.fill * self.fill_radial


def _vec(value: Any, n: int, what: str) -> np.ndarray:
    a = np.asarray(value, float).reshape(-1)
    if a.shape != (n,) or not np.all(np.isfinite(a)):
        raise RtplanError(f"{what} must be {n} finite numbers, got {value!r}")
    return a


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


def _make_solids(spec: Mapping[str, Any], tf: _Transform, where: str) -> list[_Solid]:
    """Elementary solids of one shape entry of an atlas definition, transformed."""
    kind = spec.get("type")
    w = f"{where} shape type={kind!r}"
    if kind in _SHAPE_KEYS:
        unknown = set(spec) - _SHAPE_KEYS[kind] - {"type", "op"}
        if unknown:
            raise RtplanError(
                f"{w}: unknown keys {sorted(unknown)}; expected {sorted(_SHAPE_KEYS[kind])}"
            )
    if kind == "ellipsoid":
        rot = spec.get("rotate_deg")
        c = tf.point(_vec(spec["center"], 3, f"{w} center"))
        r = _vec(spec["radii"], 3, f"{w} radii")
        if rot is None:
            return [_Ellipsoid(c, tf.radii3(r))]
        mean = np.full(3, tf.radius(1.0))
        return [_Ellipsoid(c, r * mean, _rotation(_vec(rot, 3, f"{w} rotate_deg")))]
    if kind == "box":
        lo, hi = _vec(spec["min"], 3, f"{w} min"), _vec(spec["max"], 3, f"{w} max")
        mid = tf.point((lo + hi) / 2)
        half = tf.radii3((hi - lo) / 2) / np.array([tf.fill_radial, tf.fill_radial, 1.0])
        return [_Box(mid - half, mid + half)]
    if kind == "econe":
        z0, z1 = (float(v) for v in _vec(spec["z"], 2, f"{w} z"))
        c0 = _vec(spec["center"], 2, f"{w} center")
        c1 = _vec(spec.get("center_top", c0), 2, f"{w} center_top")
        r0 = _vec(spec["radii"], 2, f"{w} radii")
        r1 = _vec(spec.get("radii_top", r0), 2, f"{w} radii_top")
        p0, p1 = tf.point([*c0, z0]), tf.point([*c1, z1])
        rr0, rr1 = tf.radii3([*r0, 1.0])[:2], tf.radii3([*r1, 1.0])[:2]
        thick = tf.radius(float(spec.get("thickness", 0.0)))
        return [_ECone(p0[2], p1[2], p0[:2], p1[:2], rr0, rr1, thick)]
    if kind == "tube":
        pts = np.asarray(spec["points"], float)
        if pts.ndim != 2 or pts.shape[1] != 3 or len(pts) < 2:
            raise RtplanError(f"{w} points must be a list of at least two [x, y, z]")
        rad = spec.get("radii", spec.get("radius"))
        radii = np.broadcast_to(np.asarray(rad, float), (len(pts),)).copy()
        if spec.get("spline", True):
            pts, radii = _catmull_rom(pts, radii)
        tp = np.array([tf.point(p) for p in pts])
        tr = [tf.radius(r) for r in radii]
        return [_Capsule(tp[n], tp[n + 1], tr[n], tr[n + 1]) for n in range(len(tp) - 1)]
    if kind == "halfspace":
        n = _vec(spec["normal"], 3, f"{w} normal") / tf.scale
        return [_HalfSpace(tf.point(_vec(spec["point"], 3, f"{w} point")), n / np.linalg.norm(n))]
    raise RtplanError(
        f"{where}: unknown shape type {kind!r}; expected ellipsoid, box, econe, tube or halfspace"
    )


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
        self.origin = np.array([self.z[0], self.y[0], self.x[0]])
        self.spacing = np.array(grid.spacing_mm)
        self.shape = np.array(grid.shape)
        self._o = [float(v) for v in self.origin]
        self._s = [float(v) for v in self.spacing]
        self._n = [int(v) for v in grid.shape]

    def box(self, lo_xyz: np.ndarray, hi_xyz: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Index range [start, stop) (k, j, i) of voxel centres inside an LPS box."""
        start, stop = [], []
        for axis, c in ((0, 2), (1, 1), (2, 0)):  # (array axis, LPS component)
            o, sp, n = self._o[axis], self._s[axis], self._n[axis]
            a = math.ceil((float(lo_xyz[c]) - o) / sp - 1e-9)
            b = math.floor((float(hi_xyz[c]) - o) / sp + 1e-9) + 1
            start.append(min(max(a, 0), n))
            stop.append(min(max(b, 0), n))
        return np.array(start), np.array(stop)

    def coords(self, start: np.ndarray, stop: np.ndarray):
        return (
            self.x[None, None, start[2] : stop[2]],
            self.y[None, start[1] : stop[1], None],
            self.z[start[0] : stop[0], None, None],
        )


@dataclass
class _Local:
    """A mask stored inside an index box: ``mask`` covers [start, start + shape)."""

    start: np.ndarray
    mask: np.ndarray

    @property
    def stop(self) -> np.ndarray:
        return self.start + np.array(self.mask.shape)


def _overlap(a0, a1, b0, b1):
    lo = [max(int(a), int(b)) for a, b in zip(a0, b0)]
    hi = [min(int(a), int(b)) for a, b in zip(a1, b1)]
    if any(h <= low for low, h in zip(lo, hi)):
        return None
    return np.array(lo), np.array(hi)


def _sl(lo, hi, origin):
    return tuple(slice(int(a - o), int(b - o)) for a, b, o in zip(lo, hi, origin))


def _union_into(
    target: np.ndarray, t0: np.ndarray, solids: Sequence[_Solid], ras: _Raster, grow: float
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
        target[_sl(*ov, t0)] |= s.inside(*ras.coords(*ov), grow)


@dataclass
class _StructDef:
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
    raw: Mapping[str, Any]


def _build_masks(defs: Sequence[_StructDef], ras: _Raster) -> dict[str, _Local | None]:
    masks: dict[str, _Local | None] = {}
    by_name = {d.name: d for d in defs}
    for d in defs:
        boxes = [ras.box(*b) for s in d.adds if (b := s.bbox(0.0)) is not None]
        if not boxes:
            masks[d.name] = None
            continue
        t0 = np.min([b[0] for b in boxes], axis=0)
        t1 = np.max([b[1] for b in boxes], axis=0)
        if np.any(t1 <= t0):
            masks[d.name] = None
            continue
        local = np.zeros(tuple(t1 - t0), bool)
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
            other = masks.get(other_name)
            keep = np.zeros_like(local)
            if other is not None:
                ov = _overlap(t0, t1, other.start, other.stop)
                if ov is not None:
                    keep[_sl(*ov, t0)] = other.mask[_sl(*ov, other.start)]
            local &= keep
        for other_name, gap in d.exclude:
            other = masks.get(other_name)
            if other is None:
                continue
            if gap > 0:
                grown = np.zeros_like(local)
                _union_into(grown, t0, by_name[other_name].adds, ras, gap)
                local &= ~grown
            ov = _overlap(t0, t1, other.start, other.stop)
            if ov is not None:
                local[_sl(*ov, t0)] &= ~other.mask[_sl(*ov, other.start)]
        masks[d.name] = _Local(t0, local) if local.any() else None
    return masks


# ============================================================================ definitions


def _atlas_root() -> Any:
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


def _check_hashes(folder: Any, where: str) -> None:
    """Compare every file listed in ``hashes.json`` with its SHA-256."""
    hfile = folder / "hashes.json"
    if not hfile.is_file():
        return
    try:
        table = json.loads(hfile.read_text(encoding="utf-8"))
    except ValueError as exc:
        raise RtplanError(f"{where}/hashes.json is not valid JSON: {exc}") from None
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


def _read_definition(folder: Any, where: str) -> dict[str, Any]:
    _check_hashes(folder, where)
    try:
        return tomllib.loads((folder / "atlas.toml").read_text(encoding="utf-8"))
    except tomllib.TOMLDecodeError as exc:
        raise RtplanError(f"{where}/atlas.toml is not valid TOML: {exc}") from None


@dataclass
class _Variation:
    scale: np.ndarray
    shifts: dict[str, np.ndarray]
    sizes: dict[str, float]
    bladder_filling: float
    rectal_filling: float
    drawn: dict[str, Any]


def _draw_variation(
    meta: Mapping[str, Any],
    groups: Sequence[str],
    *,
    scale: float | Sequence[float],
    bladder_filling: float,
    rectal_filling: float,
    seed: int | None,
) -> _Variation:
    s = np.broadcast_to(np.asarray(scale, float), (3,)).copy()
    if not np.all(np.isfinite(s)) or np.any(s < 0.8) or np.any(s > 1.25):
        raise InvalidInputError(f"scale must lie in [0.8, 1.25] (per axis x, y, z), got {scale!r}")
    for label, v in (("bladder_filling", bladder_filling), ("rectal_filling", rectal_filling)):
        if not math.isfinite(v) or not 0.3 <= v <= 2.5:
            raise InvalidInputError(
                f"{label} must lie in [0.3, 2.5] (1 = the atlas's own), got {v!r}"
            )
    shifts = {g: np.zeros(3) for g in groups}
    sizes = dict.fromkeys(groups, 1.0)
    drawn: dict[str, Any] = {}
    bf, rf = float(bladder_filling), float(rectal_filling)
    if seed is not None:
        var = meta.get("variation", {})
        rng = np.random.default_rng(seed)
        clip = float(var.get("clip_sd", 2.0))

        def n(size=None):
            return np.clip(rng.standard_normal(size), -clip, clip)

        aniso = 1.0 + float(var.get("scale_sd", 0.03)) * n(3)
        s = s * aniso
        for g in groups:  # sorted for determinism
            shifts[g] = float(var.get("translate_sd_mm", 1.5)) * n(3)
            sizes[g] = 1.0 + float(var.get("size_sd", 0.04)) * float(n())
        bf *= math.exp(float(var.get("bladder_filling_sd", 0.15)) * float(n()))
        rf *= math.exp(float(var.get("rectal_filling_sd", 0.1)) * float(n()))
        fixed = set(var.get("fixed_groups", []))
        for g in fixed:
            shifts[g] = np.zeros(3)
            sizes[g] = 1.0
        drawn = {
            "anisotropic_scale": aniso.round(4).tolist(),
            "group_shift_mm": {g: shifts[g].round(2).tolist() for g in groups},
            "group_size": {g: round(sizes[g], 4) for g in groups},
        }
    return _Variation(s, shifts, sizes, bf, rf, drawn)


def _parse(defn: Mapping[str, Any], var: _Variation, where: str) -> tuple[list[_StructDef], dict]:
    meta = defn.get("atlas", {})
    center = _vec(meta.get("scale_center_mm", [0, 0, 0]), 3, f"{where} [atlas] scale_center_mm")
    anchors = defn.get("filling", {})
    entries = defn.get("structure", [])
    if not entries:
        raise RtplanError(f"{where}: no [[structure]] entries")
    out: list[_StructDef] = []
    seen: set[str] = set()
    for e in entries:
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
        group = str(e.get("group", "body"))
        filling = e.get("filling")
        fill, fill_radial = 1.0, 1.0
        anchor = np.zeros(3)
        if filling == "bladder":
            fill = var.bladder_filling ** (1 / 3)
            anchor = _vec(anchors.get("bladder_anchor_mm", [0, 0, 0]), 3, f"{where} anchor")
        elif filling == "rectal":
            fill_radial = var.rectal_filling**0.5
        elif filling is not None:
            raise RtplanError(f"{w}: filling must be 'bladder' or 'rectal', got {filling!r}")
        tf = _Transform(
            scale=var.scale,
            center=center,
            shift=var.shifts.get(group, np.zeros(3)),
            size=var.sizes.get(group, 1.0),
            fill=fill,
            anchor=anchor,
            fill_radial=fill_radial,
        )
        adds, subs, ints = [], [], []
        for spec in e.get("shapes", []):
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
        exclude = []
        for x in e.get("exclude", []):
            xname, gap = (x, 0.0) if isinstance(x, str) else (x["name"], float(x.get("gap_mm", 0)))
            if xname not in seen:
                raise RtplanError(f"{w}: excludes {xname!r}, which is not defined before it")
            exclude.append((xname, gap))
        for wname in e.get("within", []):
            if wname not in seen:
                raise RtplanError(f"{w}: within {wname!r}, which is not defined before it")
        out.append(
            _StructDef(
                name=name,
                role=str(e.get("role", "organ")),
                export=bool(e.get("export", True)),
                group=group,
                hu=None if e.get("hu") is None else float(e["hu"]),
                core_hu=None if e.get("core_hu") is None else float(e["core_hu"]),
                core_depth_mm=float(e.get("core_depth_mm", 0.0)),
                adds=adds,
                subtracts=subs,
                intersects=ints,
                within=list(e.get("within", [])),
                exclude=exclude,
                raw=e,
            )
        )
        seen.add(name)
    landmarks: dict[str, tuple[float, float, float]] = {}
    for key, spec in defn.get("landmarks", {}).items():
        group = str(spec.get("group", "body"))
        tf = _Transform(
            scale=var.scale,
            center=center,
            shift=var.shifts.get(group, np.zeros(3)),
        )
        p = tf.point(_vec(spec["point"], 3, f"{where} landmark {key!r}"))
        landmarks[key] = (float(p[0]), float(p[1]), float(p[2]))
    return out, landmarks


def _default_grid(
    meta: Mapping[str, Any],
    var: _Variation,
    *,
    spacing_mm: Sequence[float] | None,
    shape: Sequence[int] | None,
) -> ImageGrid:
    center = np.asarray(meta.get("scale_center_mm", [0, 0, 0]), float)
    fov = np.asarray(meta.get("default_fov_mm", [500.0, 500.0]), float)
    fov_c = np.asarray(meta.get("default_fov_center_mm", [0.0, 0.0]), float)
    zr = np.asarray(meta.get("default_z_range_mm", [-80.0, 180.0]), float)
    sc = var.scale
    # the field of view follows the (scaled) anatomy
    z_lo, z_hi = center[2] + sc[2] * (zr - center[2])
    xc, yc = center[:2] + sc[:2] * (fov_c - center[:2])
    ext = np.array([z_hi - z_lo, fov[1] * sc[1], fov[0] * sc[0]])  # (z, y, x) extent
    if spacing_mm is None and shape is None:
        spacing = np.asarray(meta.get("default_spacing_mm", [2.5, 0.9765625, 0.9765625]), float)
        nxy = np.asarray(meta.get("default_shape_yx", [512, 512]), int)
        spacing[1:] = spacing[1:] * sc[1::-1]
        nz = math.ceil(ext[0] / spacing[0] - 1e-6) + 1
        shp = np.array([nz, nxy[0], nxy[1]])
    elif spacing_mm is not None and shape is None:
        spacing = np.broadcast_to(np.asarray(spacing_mm, float), (3,)).copy()
        shp = np.ceil(ext / spacing - 1e-6).astype(int) + np.array([1, 0, 0])
    elif spacing_mm is None and shape is not None:
        shp = np.asarray(shape, int)
        spacing = ext / np.maximum(shp - np.array([1, 0, 0]), 1)
    else:
        spacing = np.broadcast_to(np.asarray(spacing_mm, float), (3,)).copy()
        shp = np.asarray(shape, int)
    if shp.shape != (3,) or np.any(shp < 1) or np.any(spacing <= 0):
        raise GeometryError(
            f"shape must be three positive ints and spacing_mm three positive mm, got "
            f"shape={shape!r}, spacing_mm={spacing_mm!r}"
        )
    zc = (z_lo + z_hi) / 2
    origin = (
        xc - spacing[2] * (shp[2] - 1) / 2,
        yc - spacing[1] * (shp[1] - 1) / 2,
        zc - spacing[0] * (shp[0] - 1) / 2,
    )
    return ImageGrid(
        shape=tuple(int(v) for v in shp),  # type: ignore[arg-type]
        spacing_mm=tuple(float(v) for v in spacing),  # type: ignore[arg-type]
        origin_mm=tuple(float(v) for v in origin),  # type: ignore[arg-type]
    )


def _paint(
    defs: Sequence[_StructDef],
    masks: Mapping[str, _Local | None],
    grid: ImageGrid,
    meta: Mapping[str, Any],
    noise_seed: int,
) -> np.ndarray:
    ct = np.full(grid.shape, float(meta.get("air_hu", -1000.0)), np.float32)
    sp = np.array(grid.spacing_mm)
    for d in defs:
        loc = masks.get(d.name)
        if loc is None or d.hu is None:
            continue
        sl = _sl(loc.start, loc.stop, np.zeros(3, int))
        region = ct[sl]
        np.putmask(region, loc.mask, np.float32(d.hu))
        if d.core_hu is not None and d.core_depth_mm > 0:
            n = np.rint(d.core_depth_mm / sp).astype(int)
            core = (
                ndimage.minimum_filter(
                    loc.mask.view(np.uint8), size=tuple(2 * n + 1), mode="constant", cval=0
                ).astype(bool)
                if np.any(n > 0)
                else loc.mask
            )
            np.putmask(region, core, np.float32(d.core_hu))
    noise = float(meta.get("noise_hu", 0.0))
    if noise > 0:
        # a block of 8 noise slices, reused with a different in-plane roll per slice
        rng = np.random.default_rng(noise_seed)
        nb = min(8, grid.shape[0])
        block = rng.standard_normal((nb, *grid.shape[1:]), dtype=np.float32)
        block *= np.float32(noise)
        ny, nx = grid.shape[1:]
        for k in range(grid.shape[0]):
            shift = ((k // nb) * 37 % ny, (k // nb) * 61 % nx)
            ct[k] += np.roll(block[k % nb], shift, axis=(0, 1)) if k >= nb else block[k]
    np.clip(ct, -1024.0, 3071.0, out=ct)
    return ct


def _structure_from_local(name: str, loc: _Local | None, grid: ImageGrid, role: str) -> Structure:
    """A Structure from a mask known only inside its index box (no grid-sized array)."""
    if loc is None:
        return Structure.from_cropped(name, np.zeros((1, 1, 1), bool), (0, 0, 0), grid, role=role)
    return Structure.from_cropped(name, loc.mask, tuple(int(v) for v in loc.start), grid, role=role)


def _build_parametric(
    folder: Any,
    where: str,
    name: str,
    *,
    spacing_mm: Sequence[float] | float | None,
    shape: Sequence[int] | None,
    grid: ImageGrid | None,
    scale: float | Sequence[float],
    bladder_filling: float,
    rectal_filling: float,
    seed: int | None,
    validate: bool,
) -> Atlas:
    defn = _read_definition(folder, where)
    meta = defn.get("atlas", {})
    groups = sorted({str(e.get("group", "body")) for e in defn.get("structure", [])})
    var = _draw_variation(
        meta,
        groups,
        scale=scale,
        bladder_filling=bladder_filling,
        rectal_filling=rectal_filling,
        seed=seed,
    )
    defs, landmarks = _parse(defn, var, where)
    if grid is None:
        if spacing_mm is not None:
            spacing_mm = np.broadcast_to(np.asarray(spacing_mm, float), (3,)).tolist()
        grid = _default_grid(meta, var, spacing_mm=spacing_mm, shape=shape)
    ras = _Raster(grid)
    masks = _build_masks(defs, ras)
    ct = _paint(defs, masks, grid, meta, 0 if seed is None else int(seed))
    structures = StructureSet(grid=grid)
    for d in defs:
        if d.export:
            structures.add(_structure_from_local(d.name, masks.get(d.name), grid, d.role))
    params = {
        "scale": np.broadcast_to(np.asarray(scale, float), (3,)).tolist(),
        "bladder_filling": float(bladder_filling),
        "rectal_filling": float(rectal_filling),
        "seed": seed,
        "effective_bladder_filling": round(var.bladder_filling, 4),
        "effective_rectal_filling": round(var.rectal_filling, 4),
        **var.drawn,
    }
    atlas = Atlas(
        name=name,
        grid=grid,
        ct_hu=ct,
        structures=structures,
        landmarks=landmarks,
        source=f"{where}/atlas.toml",
        parameters=params,
    )
    if validate:
        problems = validate_anatomy(atlas, relations=defn.get("relations", {}))
        if problems:
            raise GeometryError(
                f"atlas {name!r} built with {params} is not anatomically valid: "
                + "; ".join(problems)
            )
    return atlas


# ============================================================================ validation


def _z_top_bottom(s: Structure) -> tuple[float, float]:
    (_, _), (_, _), (z0, z1) = s.bounds_mm
    half = s.grid.spacing_mm[0] / 2
    return z0 + half, z1 - half


def validate_anatomy(
    atlas: Atlas, *, relations: Mapping[str, Any] | None = None, check_overlaps: bool = True
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
        The ``[relations]`` table of an atlas definition.
    check_overlaps : bool
        Whether to check pairwise overlaps.

    Returns
    -------
    list of str
        One sentence per problem; empty when the anatomy is valid.
    """
    ss = atlas.structures
    problems: list[str] = []
    present = [ss[n] for n in ss.names if not ss[n].is_empty]
    if "Body" in ss and not ss["Body"].is_empty:
        body = ss["Body"]
        for s in present:
            if s.name == "Body":
                continue
            ov = _overlap_local(s, body)
            if ov < s.voxel_count:
                problems.append(f"{s.name} has {s.voxel_count - ov} voxels outside Body")
    if check_overlaps:
        cand = [s for s in present if s.name not in _NOT_VALIDATED_FOR_OVERLAP]
        for n, a in enumerate(cand):
            for b in cand[n + 1 :]:
                if frozenset((a.name, b.name)) in _ALLOWED_OVERLAPS:
                    continue
                ov = _overlap_local(a, b)
                if ov:
                    problems.append(
                        f"{a.name} and {b.name} overlap by {ov * a.grid.voxel_volume_cc:.2f} cc"
                    )
    problems += _check_relations(atlas, relations or {})
    return problems


def _overlap_local(a: Structure, b: Structure) -> int:
    if a.bbox is None or b.bbox is None:
        return 0
    a0 = np.array([s.start for s in a.bbox])
    a1 = np.array([s.stop for s in a.bbox])
    b0 = np.array([s.start for s in b.bbox])
    b1 = np.array([s.stop for s in b.bbox])
    ov = _overlap(a0, a1, b0, b1)
    if ov is None:
        return 0
    return int(np.count_nonzero(a.cropped_mask[_sl(*ov, a0)] & b.cropped_mask[_sl(*ov, b0)]))


def _position(atlas: Atlas, name: str) -> np.ndarray | None:
    if name in atlas.landmarks:
        return np.asarray(atlas.landmarks[name], float)
    if name in atlas.structures and not atlas.structures[name].is_empty:
        return np.asarray(atlas.structures[name].centroid_mm, float)
    return None


def _check_relations(atlas: Atlas, rel: Mapping[str, Any]) -> list[str]:
    problems: list[str] = []
    axes = {"anterior": (1, -1), "superior": (2, 1), "left_of": (0, 1)}
    for key, (axis, sign) in axes.items():
        for a, b in rel.get(key, []):
            pa, pb = _position(atlas, a), _position(atlas, b)
            if pa is None or pb is None:
                problems.append(f"relation {a} {key} {b}: {a if pa is None else b} is missing")
            elif not sign * (pa[axis] - pb[axis]) > 0:
                problems.append(
                    f"{a} is not {key.replace('_of', '')} {b} ({'xyz'[axis]} {pa[axis]:.1f} vs "
                    f"{pb[axis]:.1f} mm)"
                )
    for a, b in rel.get("lateral", []):  # a entirely lateral to b (same side as a)
        if a not in atlas.structures or b not in atlas.structures:
            problems.append(f"relation {a} lateral to {b}: a structure is missing")
            continue
        sa, sb = atlas.structures[a], atlas.structures[b]
        (ax0, ax1), _, _ = sa.bounds_mm
        (bx0, bx1), _, _ = sb.bounds_mm
        if (sa.centroid_mm[0] > 0 and not ax0 > bx1) or (sa.centroid_mm[0] <= 0 and not ax1 < bx0):
            problems.append(f"{a} is not entirely lateral to {b}")
    for a, (lo, hi) in rel.get("volume_cc", {}).items():
        if a not in atlas.structures:
            problems.append(f"{a} is missing (volume range {lo}-{hi} cc)")
            continue
        v = atlas.structures[a].volume_cc
        if not lo <= v <= hi:
            problems.append(f"{a} volume {v:.1f} cc is outside {lo}-{hi} cc")
    return problems


# ============================================================================ landmarks


def _slice_centroid(s: Structure, which: str) -> tuple[float, float, float]:
    """Centroid of the top (``"top"``) or bottom slice of a structure, at that slice's z."""
    assert s.bbox is not None
    local = s.cropped_mask
    k = local.shape[0] - 1 if which == "top" else 0
    jj, ii = np.nonzero(local[k])
    idx = np.array([k + s.bbox[0].start, jj.mean() + s.bbox[1].start, ii.mean() + s.bbox[2].start])
    p = s.grid.index_to_lps(idx)
    return (float(p[0]), float(p[1]), float(p[2]))


def derive_landmarks(structures: StructureSet) -> dict[str, tuple[float, float, float]]:
    """Landmarks that can be derived from structures (LPS mm, z = the level).

    * ``PubicSymphysis_Top``, ``FemurHead_Top_L/R``, ``PenileBulb_Top``: centroid of the
      highest slice of ``PubicSymphys``, ``Femur_Head_L/R``, ``PenileBulb``;
    * ``AorticBifurcation``: centroid of the lowest slice of ``A_Aorta``;
    * ``S3_Bottom``: centroid of the lowest slice of ``VB_S3``;
    * ``L4L5_Interspace`` / ``L5S1_Interspace``: midway between the lowest slice of the
      upper and the highest slice of the lower vertebra (``VB_S1``, else ``Sacrum``);
    * ``SacralPromontory``: most anterior voxel of the top slice of ``VB_S1`` (else
      ``Sacrum``) near the midline;
    * ``VUA``: centroid of the lowest slice of ``Bladder`` (the bladder neck, where the
      anastomosis lies after prostatectomy; an estimate).

    ``VasDeferens_CutEnd`` cannot be derived from the usual structures.

    Parameters
    ----------
    structures : StructureSet
        Structures with TG-263 names (synonyms accepted).

    Returns
    -------
    dict of str to (x, y, z)
        Only the landmarks whose structures are present.
    """
    out: dict[str, tuple[float, float, float]] = {}

    def get(name: str) -> Structure | None:
        if name in structures and not structures[name].is_empty:
            return structures[name]
        return None

    for key, sname, which in (
        ("PubicSymphysis_Top", "PubicSymphys", "top"),
        ("FemurHead_Top_L", "Femur_Head_L", "top"),
        ("FemurHead_Top_R", "Femur_Head_R", "top"),
        ("PenileBulb_Top", "PenileBulb", "top"),
        ("AorticBifurcation", "A_Aorta", "bottom"),
        ("S3_Bottom", "VB_S3", "bottom"),
        ("VUA", "Bladder", "bottom"),
    ):
        s = get(sname)
        if s is not None:
            out[key] = _slice_centroid(s, which)
    s1 = get("VB_S1") or get("Sacrum")
    for key, upper, lower in (
        ("L4L5_Interspace", get("VB_L4"), get("VB_L5")),
        ("L5S1_Interspace", get("VB_L5"), s1),
    ):
        if upper is not None and lower is not None:
            a = np.array(_slice_centroid(upper, "bottom"))
            b = np.array(_slice_centroid(lower, "top"))
            if a[2] > b[2]:
                m = (a + b) / 2
                out[key] = (float(m[0]), float(m[1]), float(m[2]))
    if s1 is not None:
        assert s1.bbox is not None
        top = s1.cropped_mask[-1]
        jj, ii = np.nonzero(top)
        mid = ii.mean()
        near = np.abs(ii - mid) <= max(1, round(10.0 / s1.grid.spacing_mm[2]))
        sign = s1.grid.axis_signs[1]  # +1: row index increases posteriorly
        jsel = jj[near].min() if sign > 0 else jj[near].max()
        idx = np.array([s1.bbox[0].stop - 1, jsel + s1.bbox[1].start, mid + s1.bbox[2].start])
        p = s1.grid.index_to_lps(idx.astype(float))
        out["SacralPromontory"] = (float(p[0]), float(p[1]), float(p[2]))
    return out


# ============================================================================ loaders


def load_atlas(
    name_or_path: str | Path = "male_pelvis_postop",
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
    if isinstance(name_or_path, Path) or (
        isinstance(name_or_path, str) and ("/" in name_or_path or "\\" in name_or_path)
    ):
        path = Path(name_or_path)
    elif isinstance(name_or_path, str) and name_or_path in list_atlases():
        folder = _atlas_root() / name_or_path
        return _build_parametric(
            folder,
            f"rtplan.atlases/{name_or_path}",
            name_or_path,
            spacing_mm=spacing_mm,
            shape=shape,
            grid=grid,
            scale=scale,
            bladder_filling=bladder_filling,
            rectal_filling=rectal_filling,
            seed=seed,
            validate=validate,
        )
    else:
        path = Path(str(name_or_path))
    if not path.is_dir():
        raise AtlasNotFoundError(
            f"no atlas {str(name_or_path)!r}: not a shipped atlas ({', '.join(list_atlases())}) "
            "and not a folder"
        )
    if (path / "atlas.toml").is_file():
        return _build_parametric(
            path,
            str(path),
            path.name,
            spacing_mm=spacing_mm,
            shape=shape,
            grid=grid,
            scale=scale,
            bladder_filling=bladder_filling,
            rectal_filling=rectal_filling,
            seed=seed,
            validate=validate,
        )
    asked = {
        "spacing_mm": spacing_mm is not None,
        "shape": shape is not None,
        "grid": grid is not None,
        "scale": np.any(np.asarray(scale, float) != 1.0),
        "bladder_filling": bladder_filling != 1.0,
        "rectal_filling": rectal_filling != 1.0,
        "seed": seed is not None,
    }
    if any(asked.values()):
        raise InvalidInputError(
            f"{', '.join(k for k, v in asked.items() if v)} can only be used with a "
            f"parametric atlas, not with the patient anatomy in {path}"
        )
    if list(path.glob("*.nii")) + list(path.glob("*.nii.gz")):
        return atlas_from_label_maps(path)
    return atlas_from_dicom(path)


def _to_identity(arrays: Sequence[np.ndarray], grid: ImageGrid):
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
        origin_mm=tuple(float(v) for v in origin),  # type: ignore[arg-type]
        frame_of_reference_uid=grid.frame_of_reference_uid,
    )
    return [np.ascontiguousarray(np.flip(a, axis=axes)) for a in arrays], new


def _finish_user_atlas(
    name: str,
    grid: ImageGrid,
    ct: np.ndarray | None,
    structures: StructureSet,
    source: str,
) -> Atlas:
    if ct is None:
        ct = _pseudo_ct(structures, grid)
    landmarks = derive_landmarks(structures)
    atlas = Atlas(
        name=name,
        grid=grid,
        ct_hu=np.asarray(ct, np.float32),
        structures=structures,
        landmarks=landmarks,
        source=source,
    )
    atlas.parameters["missing"] = atlas.missing()
    return atlas


def _pseudo_ct(structures: StructureSet, grid: ImageGrid) -> np.ndarray:
    ct = np.full(grid.shape, -1000.0, np.float32)
    for prefixes, hu in _PSEUDO_CT_HU:
        for name in structures.names:
            if name.startswith(prefixes):
                s = structures[name]
                if s.bbox is not None:
                    ct[s.bbox][s.cropped_mask] = hu
    return ct


def atlas_from_dicom(
    folder: str | Path,
    *,
    rtstruct: str | Path | None = None,
    series_uid: str | None = None,
) -> Atlas:
    """The patient's anatomy from a DICOM CT series and an RTSTRUCT.

    Reads the CT with :func:`rtplan.dicom_io.read_ct_series` and the ROIs with
    :func:`rtplan.dicom_io.read_rtstruct` (rasterised on the CT grid, names mapped to
    TG-263), flips the arrays to the identity direction, and derives the landmarks
    (:func:`derive_landmarks`). Structures and landmarks that later steps need but that
    are missing are listed by name by :meth:`Atlas.missing` (also stored in
    ``atlas.parameters["missing"]``); :meth:`Atlas.require` raises naming them.

    Parameters
    ----------
    folder : str or Path
        Folder with the CT slices (and the RTSTRUCT, unless ``rtstruct`` is given).
    rtstruct : str or Path, optional
        The RTSTRUCT file; default: the one RTSTRUCT found in ``folder``.
    series_uid : str, optional
        SeriesInstanceUID of the CT when the folder holds several series.

    Raises
    ------
    AtlasNotFoundError
        When the folder does not exist.
    DicomInputError
        When there is no RTSTRUCT, or several and none was chosen.
    """
    from rtplan.dicom_io import read_ct_series, read_rtstruct  # lazy: optional coupling
    from rtplan.errors import DicomInputError

    path = Path(folder)
    if not path.is_dir():
        raise AtlasNotFoundError(f"DICOM folder {path} does not exist")
    ct = read_ct_series(path, series_uid=series_uid)
    if rtstruct is None:
        candidates = _find_rtstructs(path)
        if not candidates:
            raise DicomInputError(
                f"no RTSTRUCT in {path}; pass rtstruct= or add the structure set file"
            )
        if len(candidates) > 1:
            raise DicomInputError(
                f"several RTSTRUCT files in {path}: {', '.join(p.name for p in candidates)}; "
                "choose one with rtstruct="
            )
        rtstruct = candidates[0]
    ss = read_rtstruct(rtstruct, ct.grid, map_names=True)
    names = list(ss.names)
    arrays, grid = _to_identity([ct.hu] + [ss[n].mask for n in names], ct.grid)
    structures = StructureSet(
        [
            Structure(n, a, grid, role=ss[n].role, color=ss[n].color)
            for n, a in zip(names, arrays[1:])
        ],
        grid=grid,
    )
    return _finish_user_atlas(path.name, grid, arrays[0], structures, str(path))


def _find_rtstructs(folder: Path) -> list[Path]:
    import pydicom

    out = []
    for p in sorted(folder.rglob("*")):
        if not p.is_file():
            continue
        try:
            with warnings.catch_warnings():  # non-DICOM files make pydicom warn
                warnings.simplefilter("ignore")
                ds = pydicom.dcmread(p, stop_before_pixels=True, specific_tags=["Modality"])
        except Exception:  # not a DICOM file
            continue
        if getattr(ds, "Modality", None) == "RTSTRUCT":
            out.append(p)
    return out


def _nifti_stem(p: Path) -> str:
    return re.sub(r"\.nii(\.gz)?$", "", p.name)


def _map_label_name(raw: str) -> str:
    if raw in TOTALSEGMENTATOR_NAMES:
        return TOTALSEGMENTATOR_NAMES[raw]
    return canonical_name(raw) or raw


def atlas_from_label_maps(
    folder: str | Path,
    *,
    ct: str | Path | None = None,
    labels: Mapping[int, str] | None = None,
    femur_head_length_mm: float = 70.0,
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
        Length of femur kept from its top as ``Femur_Head_*``.

    Raises
    ------
    ImportError
        When nibabel is not installed (``pip install rtplan[nifti]``).
    AtlasNotFoundError
        When the folder has no NIfTI files.
    GeometryError
        When the files disagree in geometry or the affine is not axial.
    """
    try:
        import nibabel as nib
    except ImportError:  # pragma: no cover - nibabel is installed in the test env
        raise ImportError(
            "reading NIfTI label maps needs nibabel: pip install 'rtplan[nifti]'"
        ) from None
    path = Path(folder)
    files = sorted(path.glob("*.nii")) + sorted(path.glob("*.nii.gz"))
    ct_names = {"ct", "image", "img", "ct_image"}
    ct_file = next((f for f in files if _nifti_stem(f).lower() in ct_names), None)
    files = [f for f in files if f is not ct_file]
    if not files:
        raise AtlasNotFoundError(f"no NIfTI label maps (*.nii, *.nii.gz) in {path}")

    def load(f: Path) -> tuple[np.ndarray, ImageGrid]:
        img = nib.load(str(f))
        data = np.asanyarray(img.dataobj)
        if data.ndim == 4 and data.shape[3] == 1:
            data = data[..., 0]
        if data.ndim != 3:
            raise GeometryError(f"{f} holds a {data.ndim}-D array; expected 3-D")
        g = ImageGrid.from_affine(img.affine, data.shape, convention="RAS")
        return ImageGrid.array_from_ijk(data), g

    mapping = dict(labels) if labels is not None else _read_label_table(path)
    raw: list[tuple[str, np.ndarray]] = []
    grid0: ImageGrid | None = None
    if len(files) == 1 and mapping:
        arr, grid0 = load(files[0])
        values = np.unique(arr)
        for v in values:
            if v == 0:
                continue
            cname = mapping.get(int(v), f"label_{int(v)}")
            raw.append((cname, arr == v))
    else:
        for f in files:
            arr, g = load(f)
            if grid0 is None:
                grid0 = g
            elif not grid0.equals(g, atol_mm=0.01):
                raise GeometryError(
                    f"{f.name} is on {g.describe()} but {files[0].name} is on "
                    f"{grid0.describe()}; label maps must share one grid"
                )
            raw.append((_nifti_stem(f), arr != 0))
    assert grid0 is not None
    ct_arr = None
    if ct is not None or ct_file is not None:
        ct_path = Path(ct) if ct is not None else ct_file
        assert ct_path is not None
        if ct_path.is_dir():
            from rtplan.dicom_io import read_ct_series

            series = read_ct_series(ct_path)
            (ct_id,), ct_grid = _to_identity([series.hu], series.grid)
            ct_arr = ct_id
        else:
            ct_arr, ct_grid = load(ct_path)
            (ct_arr,), ct_grid = _to_identity([ct_arr], ct_grid)
    arrays, grid = _to_identity([m for _, m in raw], grid0)
    if ct_arr is not None and not ct_grid.equals(grid, atol_mm=0.01):
        raise GeometryError(
            f"the CT is on {ct_grid.describe()} but the label maps are on {grid.describe()}; "
            "resample one onto the other first"
        )
    structures = StructureSet(grid=grid)
    for (rname, _), mask in zip(raw, arrays):
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
            structures.add(Structure("PubicSymphys", ps, grid))
    return _finish_user_atlas(path.name, grid, ct_arr, structures, str(path))


def _read_label_table(folder: Path) -> dict[int, str]:
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


def _crop_top(mask: np.ndarray, grid: ImageGrid, length_mm: float) -> np.ndarray:
    z = grid.axis_coordinates_mm()[0]
    ks = np.flatnonzero(mask.any(axis=(1, 2)))
    top = z[ks].max()
    keep = z >= top - length_mm
    return mask & keep[:, None, None]


def _symphysis_from_hips(structures: StructureSet, grid: ImageGrid) -> np.ndarray | None:
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
